"""The result of prune, distill and finetune in the format the user asks for (``export.save_path``, ``export.format``).

The NeMo 1 tutorial writes its results as ``.nemo`` archives (``export.save_path=4b_width_pruned.nemo``,
``model.nemo_path=...``); NeMo 2 users want a NeMo 2 directory, others a Hugging Face one. A recipe writes
its nemo_minitron checkpoint as before; for any other format it writes it into a hidden staging directory
next to the output, converts it with :func:`nemo_minitron.interop.convert.convert` and removes the staging
directory. Files that belong with the result (the pruning report) go into the output directory, or beside a
``.nemo`` archive in ``<save_path>.report/``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from nemo_minitron.atomic import barrier, check_output_path, clean_stale_temps, is_rank0
from nemo_minitron.config.model import ConfigError
from nemo_minitron.paths import PathLike

#: ``export.format`` values; ``auto`` is ``nemo`` for a save_path ending in ``.nemo``, else ``megatron``.
EXPORT_FORMATS = ("auto", "megatron", "nemo", "nemo2", "hf")


def resolve_format(save_path: PathLike, fmt: str = "auto") -> str:
    """The concrete export format of ``save_path`` for ``export.format=fmt``."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export.format={fmt!r} must be one of {list(EXPORT_FORMATS)}")
    if fmt == "auto":
        return "nemo" if str(save_path).endswith(".nemo") else "megatron"
    return fmt


def _is_archive(save_path: PathLike, fmt: str) -> bool:
    return fmt == "nemo" and str(save_path).endswith(".nemo")


def report_dir(save_path: PathLike, fmt: str = "auto") -> Path:
    """Where files that belong with the result go: the output directory, or ``<save_path>.report`` for an archive."""
    final = Path(os.path.expanduser(str(save_path))).absolute()
    return final.parent / f"{final.name}.report" if _is_archive(save_path, resolve_format(save_path, fmt)) else final


def check_export_path(save_path: PathLike, fmt: str = "auto", *, key: str = "export.save_path",
                      overwrite: bool = False, inputs: Iterable[Optional[PathLike]] = (),
                      exists_error: type = ConfigError) -> Path:
    """Validate the output (and its format) before any work; returns it absolute."""
    from nemo_minitron.checkpoint import COMPLETE_MARKER

    concrete = resolve_format(save_path, fmt)
    return check_output_path(save_path, key, overwrite=overwrite, inputs=inputs, markers=(COMPLETE_MARKER,),
                             exists_error=exists_error, is_dir=not _is_archive(save_path, concrete))


def save_result(model, cfg, save_path: PathLike, fmt: str = "auto", *, overwrite: bool = False,
                tokenizer_dir: Optional[PathLike] = None, extra_metadata: Optional[dict[str, Any]] = None,
                add_files: Optional[Callable[[Path], None]] = None) -> Path:
    """Write ``model`` (this rank's shard, config ``cfg``) to ``save_path`` as ``fmt``. Collective.

    ``add_files(directory)`` runs on rank 0 to add files that belong with the result: inside the
    checkpoint's temporary directory for megatron (so both appear together), else into
    :func:`report_dir` once the export is complete.
    """
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.interop.convert import convert

    concrete = resolve_format(save_path, fmt)
    if concrete == "megatron":
        return save_checkpoint(model, cfg, save_path, overwrite=overwrite, tokenizer_dir=tokenizer_dir,
                               extra_metadata=extra_metadata, before_publish=add_files)
    final = Path(os.path.expanduser(str(save_path))).absolute()
    staging = final.parent / f".{final.name}.export-staging"
    if is_rank0():
        clean_stale_temps(staging)
        if staging.exists():  # left by a killed export: only ever ours
            shutil.rmtree(staging)
    barrier()
    try:
        save_checkpoint(model, cfg, staging, tokenizer_dir=tokenizer_dir, extra_metadata=extra_metadata)
        convert(staging, "megatron", final, concrete, overwrite=overwrite)
    finally:
        barrier()
        if is_rank0():
            shutil.rmtree(staging, ignore_errors=True)
    if add_files is not None and is_rank0():
        where = report_dir(final, concrete)
        where.mkdir(exist_ok=True)
        add_files(where)
    barrier()
    return final
