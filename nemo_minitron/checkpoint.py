"""Megatron distributed checkpoints of a model, with metadata, written atomically.

Layout of a checkpoint directory ``CKPT/``::

    CKPT/
      nemo_minitron.json     format version, library + megatron-core versions, model config, saved layout
      weights/               megatron-core dist_checkpointing (torch_dist) of model.sharded_state_dict()
      tokenizer/             (optional) the model's tokenizer files, carried along so later steps need no
                             separate tokenizer argument
      COMPLETE               written last; a directory without it is never treated as a checkpoint

``nemo_minitron.json`` records the SHA-256 of every file written (``checksums``, relative paths);
:func:`load_checkpoint` verifies them before megatron-core reads a byte, so a flipped or truncated
shard is reported by name instead of loading garbage (``verify_checksums`` does it on its own).

Saving writes everything into a hidden sibling ``.CKPT.incomplete-<tag>/`` and renames it into
place only after every rank has finished, so a crash never leaves a half-written directory that
looks complete. Any TP/PP layout can load a checkpoint written at any other (dist_checkpointing
reshards); the architecture in the metadata must match the model being loaded into.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from nemo_minitron.atomic import (
    barrier,
    broadcast_from_rank0,
    check_output_path,
    collective_atomic_dir,
    is_rank0,
)
from nemo_minitron.config.model import ModelConfig
from nemo_minitron.logging import get_logger

log = get_logger(__name__)

FORMAT_VERSION = 1
METADATA_FILE = "nemo_minitron.json"
WEIGHTS_DIR = "weights"
TOKENIZER_DIR = "tokenizer"
COMPLETE_MARKER = "COMPLETE"
VERIFY_ENV = "NEMO_MINITRON_VERIFY_CHECKSUMS"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete, corrupt or does not match the model."""


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` is a complete nemo_minitron checkpoint directory."""
    p = Path(path)
    return (p / COMPLETE_MARKER).is_file() and (p / METADATA_FILE).is_file()


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Validated metadata of the checkpoint at ``path``; raises :class:`CheckpointError` on any defect."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p} does not exist or is not a directory")
    if not (p / COMPLETE_MARKER).is_file() and (p / "config.json").is_file():
        raise CheckpointError(
            f"{p} is a Hugging Face checkpoint, not a nemo_minitron megatron checkpoint; convert it first: "
            f"python examples/convert_checkpoint.py input_path={p} output_path=<new dir>"
        )
    if not (p / COMPLETE_MARKER).is_file():
        raise CheckpointError(
            f"checkpoint {p} is incomplete (no {COMPLETE_MARKER} marker): it was not fully written; "
            "re-create it instead of loading it"
        )
    try:
        meta = json.loads((p / METADATA_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {p} has no {METADATA_FILE}") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {p}: {METADATA_FILE} is corrupt ({exc})") from None
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {p} has format_version={version!r}; this library reads {FORMAT_VERSION}")
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"checkpoint {p}: {METADATA_FILE} has no 'model' section")
    weights = p / WEIGHTS_DIR
    if not (weights / ".metadata").is_file() or not (weights / "metadata.json").is_file():
        raise CheckpointError(f"checkpoint {p}: {WEIGHTS_DIR}/ is not a megatron dist checkpoint (metadata missing)")
    return meta


def load_model_config(path: str | os.PathLike) -> ModelConfig:
    """The :class:`ModelConfig` stored in a checkpoint (runtime fields at their defaults)."""
    meta = read_metadata(path)
    return ModelConfig.from_dict(meta["model"], strict=False)


def save_checkpoint(
    model: torch.nn.Module,
    cfg: ModelConfig,
    path: str | os.PathLike,
    extra_metadata: Optional[dict[str, Any]] = None,
    overwrite: bool = False,
    tokenizer_dir: Optional[str | os.PathLike] = None,
    before_publish: Optional[Callable[[Path], None]] = None,
) -> Path:
    """Save ``model`` (this rank's shard) to ``path`` atomically. Collective: every rank must call it.

    ``tokenizer_dir`` (a directory of tokenizer files, e.g. ``tokenizer.json`` + ``tokenizer_config.json``)
    is copied into ``path/tokenizer/`` so the checkpoint carries its own tokenizer. ``before_publish``
    is called on rank 0 with the temporary directory once the checkpoint is written, to add files
    (reports) that must appear together with it; they are not covered by the checksums.
    """
    final = check_output_path(path, key="checkpoint path", overwrite=overwrite, markers=(COMPLETE_MARKER,),
                              exists_error=CheckpointError)
    prepare_checkpoint_writer()
    with collective_atomic_dir(final) as tmp:
        try:
            _write_checkpoint(model, cfg, tmp, extra_metadata, tokenizer_dir)
            if before_publish is not None and is_rank0():
                before_publish(tmp)
        except BaseException as exc:  # torch DCP's CheckpointException is not an Exception subclass
            if isinstance(exc, OSError) or (not isinstance(exc, (KeyboardInterrupt, SystemExit, CheckpointError))
                                            and "[Errno " in str(exc)):
                raise CheckpointError(f"cannot write checkpoint {final}: {_last_line(exc)}"
                                      f"{'' if str(final) in _last_line(exc) else ' (nothing was left there)'}"
                                      ) from exc
            raise
    if is_rank0():
        log.info("saved checkpoint %s", final)
    return final


def _write_checkpoint(model, cfg: ModelConfig, tmp: Path, extra_metadata, tokenizer_dir) -> None:
    """Fill the temporary checkpoint directory ``tmp`` (collective)."""
    from megatron.core import dist_checkpointing

    from nemo_minitron import __version__
    from nemo_minitron.mcore_compat import mcore_version

    if is_rank0():
        (tmp / WEIGHTS_DIR).mkdir()
    barrier()
    module = getattr(model, "module", model)  # unwrap DDP so keys carry no "module." prefix
    dist_checkpointing.save(module.sharded_state_dict(prefix=""), str(tmp / WEIGHTS_DIR))
    if is_rank0():  # the directory is renamed into place only after every rank has finished
        meta = {
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "megatron_core_version": ".".join(map(str, mcore_version())),
            "torch_version": torch.__version__,
            "model": cfg.arch_dict() | {"name": cfg.name},
            "saved_layout": {
                "tensor_model_parallel_size": cfg.tensor_model_parallel_size,
                "pipeline_model_parallel_size": cfg.pipeline_model_parallel_size,
            },
            "created_unix": time.time(),
        }
        if extra_metadata:
            meta["extra"] = extra_metadata
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / TOKENIZER_DIR)
            meta["tokenizer"] = TOKENIZER_DIR
        meta["checksums"] = {rel: sha256_file(tmp / rel) for rel in _payload_files(tmp)}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        (tmp / COMPLETE_MARKER).write_text("ok\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _payload_files(root: Path) -> list[str]:
    """Every file under ``root`` covered by the checksums (all but the metadata and markers), sorted."""
    skip = {METADATA_FILE, COMPLETE_MARKER}
    return sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file() and str(f.relative_to(root))
                  not in skip)


def checksum_problems(path: str | os.PathLike, meta: Optional[dict[str, Any]] = None) -> list[str]:
    """Files of the checkpoint at ``path`` that are missing or differ from the recorded SHA-256."""
    p = Path(path)
    meta = read_metadata(p) if meta is None else meta
    problems = []
    for rel, digest in sorted((meta.get("checksums") or {}).items()):
        f = p / rel
        if not f.is_file():
            problems.append(f"{f} is missing")
        elif sha256_file(f) != digest:
            problems.append(f"{f} is corrupt (SHA-256 differs from the one recorded when it was written)")
    return problems


def verify_checksums(path: str | os.PathLike, meta: Optional[dict[str, Any]] = None) -> None:
    """Raise :class:`CheckpointError` naming every file whose SHA-256 differs from the metadata.

    Checkpoints written before checksums were recorded pass unchecked, and ``NEMO_MINITRON_VERIFY_CHECKSUMS=0``
    skips the check. Collective when a process group exists: rank 0 reads the files, every rank raises the
    same error.
    """
    if os.environ.get(VERIFY_ENV, "1") == "0":
        return
    problems = checksum_problems(path, meta) if is_rank0() else None
    problems = broadcast_from_rank0(problems)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointError(f"checkpoint {path} is damaged: {shown}. Re-create or re-copy it")


def prepare_checkpoint_writer() -> None:
    """Give megatron-core's checkpoint writer a result queue whose server process dies with this one.

    megatron-core's torch_dist writer creates a multiprocessing manager (a separate server process)
    on the first save and keeps it for the life of the process; killed with ``kill -9`` its parent
    leaves it running. Created here with :func:`nemo_minitron.cli.die_with_parent` as initializer,
    it goes when its parent goes, however that ends.
    """
    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async
    except ImportError:  # pragma: no cover - megatron-core missing
        return
    if getattr(filesystem_async, "_results_queue", "absent") is not None:
        return  # already created, or a megatron-core without this module-level queue
    import multiprocessing as mp
    from multiprocessing.managers import SyncManager

    from nemo_minitron.cli import die_with_parent

    manager = SyncManager(ctx=mp.get_context("spawn"))
    manager.start(initializer=die_with_parent)
    filesystem_async._results_queue = manager.Queue()


def tokenizer_path(path: str | os.PathLike) -> Optional[Path]:
    """The tokenizer directory carried by the checkpoint at ``path``, or None if it has none."""
    p = Path(path) / TOKENIZER_DIR
    return p if p.is_dir() else None


def check_compatible(saved: ModelConfig, wanted: ModelConfig, path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` listing every architecture field that differs."""
    diff = wanted.arch_diff(saved)
    if diff:
        lines = ", ".join(f"model.{k}: requested {a!r}, checkpoint has {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(f"checkpoint {path} does not match the requested model: {lines}")


def load_checkpoint(model: torch.nn.Module, cfg: ModelConfig, path: str | os.PathLike, strict: bool = True) -> dict:
    """Load the checkpoint at ``path`` into ``model`` (built from ``cfg`` at any TP/PP, either layer spec). Collective.

    Returns the checkpoint metadata. Every weight of the model must be found in the checkpoint and
    every weight of the checkpoint used (:func:`load_weights`); ``strict=False`` only tolerates
    missing/unexpected entries of the final ``load_state_dict``.
    """
    meta = read_metadata(path)
    check_compatible(ModelConfig.from_dict(meta["model"], strict=False), cfg, path)
    verify_checksums(path, meta)
    load_weights(model, Path(path) / WEIGHTS_DIR, strict=strict)
    return meta


def _last_line(exc: BaseException) -> str:
    """The last meaningful line of an error (torch DCP embeds whole remote tracebacks in its messages)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and ln.strip() != ")"]
    return lines[-1] if lines else type(exc).__name__


class UnmatchedKeysError(CheckpointError, KeyError):
    """Checkpoint and model tensors do not match one to one; the message lists both sides."""

    def __str__(self) -> str:
        return str(self.args[0])


def _mismatch(where: str, missing, unexpected) -> UnmatchedKeysError:
    missing, unexpected = sorted(missing), sorted(unexpected)
    return UnmatchedKeysError(
        f"{where}: {len(missing)} model tensor(s) not found in the checkpoint {missing[:20]}"
        f"{' ...' if len(missing) > 20 else ''}; {len(unexpected)} checkpoint tensor(s) not used by the model "
        f"{unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}. Refusing to load a partial model "
        "(fused names like linear_qkv.layer_norm_weight and unfused input_layernorm.weight are both accepted)")


def stored_tensor_keys(weights_dir: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor keys (and global shapes) stored in a megatron dist checkpoint directory."""
    from megatron.core import dist_checkpointing

    meta = dist_checkpointing.load_tensors_metadata(str(weights_dir))
    return {k: tuple(getattr(v, "global_shape", ())) for k, v in meta.items()}


def weights_request(module: torch.nn.Module, stored: dict[str, Any], prefix: str = "") -> tuple[dict, list[str], set]:
    """The sharded state dict to load from a checkpoint holding tensor keys ``stored``.

    ``_extra_state`` objects (TE/FP8 bookkeeping: a TE model asks for some a local-spec checkpoint
    lacks, and vice versa) are left out; a weight stored under its other norm spelling (TE-fused ⇄
    local, :mod:`nemo_minitron.models.names`) is requested under the stored name. Returns
    ``(request, missing model keys, used checkpoint keys)``.
    """
    from nemo_minitron.models import names

    request = module.sharded_state_dict(prefix=prefix)
    used, missing = set(), []
    for name in list(request):
        sh = request[name]
        key = getattr(sh, "key", name)
        if names.is_extra_state(name) or names.is_extra_state(key):
            del request[name]
            continue
        if key not in stored and names.alternative(key) in stored:
            sh.key = key = names.alternative(key)
        (used.add if key in stored else missing.append)(key)
    return request, missing, used


def load_weights(model: torch.nn.Module, weights_dir: str | os.PathLike, prefix: str = "", strict: bool = True) -> None:
    """Load the weights of a megatron dist checkpoint ``weights_dir`` into ``model`` (any spec, any TP/PP). Collective.

    The one loader for every checkpoint read: it accepts local-spec and Transformer Engine
    checkpoints into either spec (:func:`weights_request`), ignores entries that
    ``dist_checkpointing.load`` merges in from ``common.pt`` (NeMo stores run metadata there) and,
    with a ``prefix`` (NeMo 2: ``"module."``), stored tensors outside it (optimizer states). Raises
    :class:`UnmatchedKeysError` before reading any data unless model and checkpoint weights match one
    to one: a weight is never silently left at its initial value.
    """
    from megatron.core import dist_checkpointing

    from nemo_minitron.models import names

    module = getattr(model, "module", model)  # unwrap DDP so keys carry no "module." prefix
    try:
        stored = stored_tensor_keys(weights_dir)
    except BaseException as exc:  # torch DCP's CheckpointException is not an Exception subclass
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointError(f"checkpoint {weights_dir}: cannot read its metadata ({_last_line(exc)}); "
                              "re-create or re-copy it") from exc
    request, missing, used = weights_request(module, stored, prefix)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        # every stage asks for its own tensors: match against the union, and let every rank decide alike
        everyone: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everyone, (missing, sorted(used)))
        missing = sorted({k for m, _ in everyone for k in m})
        used = {k for _, u in everyone for k in u}
    others = [k for k in stored if prefix and not k.startswith(prefix)]
    if others:
        log.info("ignoring %d non-model tensor(s) in %s (e.g. %s)", len(others), weights_dir, others[0])
    unexpected = {k for k in stored if k not in used and names.is_weight_key(k) and k not in others}
    if missing or unexpected:
        raise _mismatch(f"checkpoint {weights_dir}", missing, unexpected)
    requested = set(request)
    try:
        state = dist_checkpointing.load(request, str(weights_dir))
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointError(f"checkpoint {weights_dir}: failed to read weights ({_last_line(exc)}); "
                              "re-create or re-copy it") from exc
    dropped = sorted(k for k in state if k not in requested)
    if dropped:
        log.debug("ignoring %d common entr(ies) of %s: %s", len(dropped), weights_dir, dropped[:5])
    state = {k[len(prefix):] if prefix and k.startswith(prefix) else k: v for k, v in state.items() if k in requested}
    bad_missing, bad_unexpected = module.load_state_dict(state, strict=False)
    bad_missing = [k for k in bad_missing if names.is_weight_key(k)]
    bad_unexpected = [k for k in bad_unexpected if names.is_weight_key(k)]
    if strict and (bad_missing or bad_unexpected):
        raise _mismatch(f"checkpoint {weights_dir} (state dict)", bad_missing, bad_unexpected)
