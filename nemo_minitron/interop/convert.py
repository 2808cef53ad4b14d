"""One conversion entry point: any supported input format to any supported output format.

Every conversion goes through a nemo_minitron megatron checkpoint (the hub format): the input is
imported into one (directly at ``output_path`` when the output format is megatron, else into a
hidden staging directory next to the output), then exported. Each step streams tensor by tensor,
so the peak memory stays near one copy of the model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Union

from nemo_minitron.atomic import barrier, check_output_path, clean_stale_temps, is_rank0
from nemo_minitron.config.model import ConfigError
from nemo_minitron.logging import get_logger
from nemo_minitron.paths import PathLike

log = get_logger(__name__)

#: ``nemo``: a NeMo 1 ``.nemo`` archive or its extracted directory; ``nemo2``: a NeMo 2 checkpoint directory
INPUT_FORMATS = ("hf", "gguf", "nemo2", "nemo", "megatron")
OUTPUT_FORMATS = ("hf", "nemo2", "nemo", "megatron")


def convert(input_path: PathLike, input_format: str, output_path: PathLike, output_format: str, *,
            tp: int = 1, pp: int = 1, precision: str = "auto", transformer_impl: str = "auto",
            hf_model_type: Optional[str] = None,
            dtype: str = "auto", max_shard_size: Union[str, int] = "5GB", tokenizer_path: Optional[PathLike] = None,
            trust_remote_code: bool = False, overwrite: bool = False, cache_dir: Optional[PathLike] = None) -> Path:
    """Convert ``input_path`` (``input_format``) into ``output_path`` (``output_format``). Collective under torchrun.

    ``transformer_impl`` picks the megatron layer spec used while converting (``auto``: Transformer
    Engine on a GPU when importable, else local); tensor names are translated for either spec.
    """
    from nemo_minitron.checkpoint import (
        COMPLETE_MARKER,
        is_checkpoint,
        load_checkpoint,
        load_model_config,
        save_checkpoint,
    )
    from nemo_minitron.checkpoint import tokenizer_path as ckpt_tokenizer
    from nemo_minitron.config.model import TRANSFORMER_IMPLS
    from nemo_minitron.interop.hf import export_hf, import_hf
    from nemo_minitron.interop.megatron_io import build_model_for_conversion, conversion_layout
    from nemo_minitron.interop.nemo1 import export_nemo1, import_nemo1
    from nemo_minitron.interop.nemo2 import export_nemo2, import_nemo2

    if input_format not in INPUT_FORMATS:
        raise ConfigError(f"input_format={input_format!r} must be one of {list(INPUT_FORMATS)}")
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"output_format={output_format!r} must be one of {list(OUTPUT_FORMATS)}")
    if transformer_impl not in TRANSFORMER_IMPLS:
        raise ConfigError(f"model.transformer_impl={transformer_impl!r} must be one of {list(TRANSFORMER_IMPLS)}")
    archive = output_format == "nemo" and str(output_path).endswith(".nemo")  # a file, not a directory
    out = check_output_path(output_path, "output_path", overwrite=overwrite, inputs=(input_path, tokenizer_path),
                            markers=(COMPLETE_MARKER,), is_dir=not archive)
    if input_format == "megatron" and not is_checkpoint(input_path):
        raise FileNotFoundError(f"input_path={input_path} is not a complete nemo_minitron megatron checkpoint")
    _check_tokenizer_source(input_path, input_format, tokenizer_path)
    if input_format == "gguf" and tokenizer_path is not None:
        log.warning("tokenizer_path is ignored for GGUF input: the GGUF file embeds its tokenizer")

    staging = out.parent / f".{out.name}.megatron-staging"
    ckpt = out if output_format == "megatron" else staging
    if ckpt == staging and is_rank0():
        clean_stale_temps(staging)
        if staging.exists():
            shutil.rmtree(staging)
    barrier()
    try:
        if input_format in ("hf", "gguf"):
            import_hf(input_path, ckpt, tp, pp, precision=precision, tokenizer_dir=tokenizer_path,
                      trust_remote_code=trust_remote_code, overwrite=overwrite, cache_dir=cache_dir,
                      transformer_impl=transformer_impl)
        elif input_format == "nemo2":
            import_nemo2(input_path, ckpt, tp, pp, precision=precision, overwrite=overwrite,
                         transformer_impl=transformer_impl)
        elif input_format == "nemo":
            import_nemo1(input_path, ckpt, tp, pp, precision=precision, overwrite=overwrite)
        elif output_format == "megatron":  # megatron -> megatron: re-save (e.g. attach a tokenizer, record a layout)
            cfg = load_model_config(input_path).replace(precision=precision, transformer_impl=transformer_impl)
            cfg.replace(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp).validate()
            btp, bpp = conversion_layout(tp, pp)
            model = build_model_for_conversion(cfg, btp, bpp)
            run_cfg = cfg.replace(tensor_model_parallel_size=btp, pipeline_model_parallel_size=bpp)
            load_checkpoint(model, run_cfg, input_path)
            save_checkpoint(model, run_cfg, ckpt, overwrite=overwrite,
                            tokenizer_dir=tokenizer_path or ckpt_tokenizer(input_path))
        else:
            ckpt = Path(input_path)
        if output_format == "hf":
            export_hf(ckpt, out, model_type=hf_model_type, dtype=dtype, max_shard_size=max_shard_size,
                      overwrite=overwrite, tokenizer_dir=tokenizer_path if input_format == "megatron" else None,
                      transformer_impl=transformer_impl, tp=tp, pp=pp)
        elif output_format == "nemo2":
            export_nemo2(ckpt, out, overwrite=overwrite, transformer_impl=transformer_impl)
        elif output_format == "nemo":
            export_nemo1(ckpt, out, overwrite=overwrite)
    finally:
        barrier()
        if is_rank0() and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("converted %s (%s) → %s (%s)", input_path, input_format, out, output_format)
    return out


def checkpoint_format(path: PathLike) -> str:
    """``megatron``, ``nemo2`` or ``nemo`` (NeMo 1) for a checkpoint path; raises FileNotFoundError otherwise."""
    from nemo_minitron.checkpoint import is_checkpoint
    from nemo_minitron.interop.nemo1 import is_nemo1
    from nemo_minitron.interop.nemo2 import is_nemo2_dir

    p = Path(path)
    if is_checkpoint(p):
        return "megatron"
    if p.is_dir() and is_nemo2_dir(p):
        return "nemo2"
    if is_nemo1(p):
        return "nemo"
    raise FileNotFoundError(f"{p} is not a nemo_minitron megatron checkpoint, a NeMo 2 checkpoint directory or a "
                            "NeMo 1 .nemo checkpoint")


def resolve_checkpoint(path: PathLike, key: str = "model.restore_from_path") -> Path:
    """A megatron checkpoint for any checkpoint path (collective).

    ``path`` itself when it is one; a NeMo 2
    directory or NeMo 1 ``.nemo`` is imported once into the hidden sibling ``.<name>.minitron`` (reused while
    newer than the source); anything else is returned unchanged for the megatron loader to diagnose.
    ``key`` names the setting in log messages.
    """
    from nemo_minitron.checkpoint import is_checkpoint

    p = Path(path).absolute()
    try:
        fmt = checkpoint_format(p)
    except FileNotFoundError:
        return Path(path)  # not a NeMo checkpoint: the megatron loader reports what is wrong with it
    if fmt == "megatron":
        return Path(path)
    cached = p.parent / f".{p.name}.minitron"
    fresh = is_checkpoint(cached) and cached.stat().st_mtime >= p.stat().st_mtime
    if not fresh:
        log.info("%s=%s is a %s checkpoint: converting it once into %s", key, path, fmt, cached)
        convert(p, fmt, cached, "megatron", overwrite=True)
    return cached


def _check_tokenizer_source(input_path: PathLike, input_format: str, tokenizer_path: Optional[PathLike]) -> None:
    """Every output carries a tokenizer: refuse a missing ``tokenizer_path`` or an HF input without one."""
    vocab_files = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer.tiktoken")

    def has_tokenizer(d: Path) -> bool:
        return d.is_dir() and any((d / n).is_file() for n in vocab_files)

    if tokenizer_path is not None:
        tok = Path(tokenizer_path)
        if not tok.exists():
            raise FileNotFoundError(f"tokenizer_path={tokenizer_path} does not exist")
        if tok.is_dir() and not has_tokenizer(tok):
            raise ConfigError(f"tokenizer_path={tokenizer_path} holds no tokenizer files (any of "
                              f"{', '.join(vocab_files)})")
    elif input_format == "hf" and Path(input_path).is_dir() and not has_tokenizer(Path(input_path)):
        raise ConfigError(f"input_path={input_path} has no tokenizer files (any of {', '.join(vocab_files)}); "
                          "pass tokenizer_path=<directory with the model's tokenizer>")
