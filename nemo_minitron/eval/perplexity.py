"""Perplexity of any checkpoint (ours, Hugging Face, NeMo 2, GGUF) at any TP × PP layout.

Non-megatron inputs are imported once into a nemo_minitron checkpoint through the interop
converters (reused when already complete), then built at the requested layout. Windows come
from :func:`nemo_minitron.data.calibration.load_calibration_data` (indexed prefix or raw text),
are split over data-parallel replicas, and scored by the forward engine
(:func:`nemo_minitron.models.forward.lm_loss_sums`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from nemo_minitron.config.model import ConfigError
from nemo_minitron.logging import get_logger
from nemo_minitron.models.forward import LossSums, lm_loss_sums, window_batches
from nemo_minitron.paths import PathLike

log = get_logger(__name__)



def detect_format(path: PathLike) -> str:
    """megatron, nemo2, gguf or hf, from the files at ``path``."""
    from nemo_minitron.checkpoint import is_checkpoint
    from nemo_minitron.interop.gguf import is_gguf_input
    from nemo_minitron.interop.nemo2 import is_nemo2_dir

    p = str(path)
    if is_checkpoint(p):
        return "megatron"
    if is_gguf_input(p):
        return "gguf"
    if is_nemo2_dir(p) or p.endswith(".nemo"):
        return "nemo2"
    if (Path(p) / "config.json").is_file():
        return "hf"
    raise ConfigError(f"checkpoint={p} is neither a nemo_minitron checkpoint, a Hugging Face directory "
                      "(config.json), a NeMo 2 checkpoint nor a .gguf file")


def resolve_checkpoint(path: PathLike, fmt: str = "auto", work_dir: Optional[PathLike] = None) -> Path:
    """A nemo_minitron checkpoint for ``path``: itself, or its import (made once, then reused). Collective."""
    from nemo_minitron.checkpoint import is_checkpoint
    from nemo_minitron.interop.convert import convert

    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "megatron":
        if not is_checkpoint(path):
            raise ConfigError(f"checkpoint={path} is not a complete nemo_minitron checkpoint")
        return Path(path)
    name = Path(str(path).rstrip("/")).name
    base = Path(work_dir) if work_dir is not None else Path(str(path).rstrip("/")).parent
    out = base / f"{name}.megatron"
    if not is_checkpoint(out):
        log.info("importing %s checkpoint %s -> %s", fmt, path, out)
        convert(path, fmt, out, "megatron", overwrite=out.exists())
    return out


def load_model(ckpt: PathLike, tp: int = 1, pp: int = 1):
    """Build and load the checkpoint at TP × PP; returns ``(model, model_config, parallel_context)``. Collective."""
    from nemo_minitron import runtime
    from nemo_minitron.checkpoint import load_checkpoint, load_model_config
    from nemo_minitron.models.builder import build_gpt_model

    cfg = load_model_config(ckpt).replace(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    ctx = runtime.init_model_parallel(tp, pp, seed=cfg.seed)
    model = build_gpt_model(cfg)
    load_checkpoint(model, cfg, ckpt)
    return model, cfg, ctx


def eval_windows(data: str, num_samples: int, seq_length: int, seed: int = 1234,
                 tokenizer: Optional[PathLike] = None):
    """``(tokens [N, L], mask [N, L])`` windows of ``data`` (prefix or raw text)."""
    from nemo_minitron.data.calibration import load_calibration_data

    is_prefix = Path(data + ".bin").is_file() and Path(data + ".idx").is_file()
    if not is_prefix and not Path(data).exists():
        raise ConfigError(f"data={data} is neither an indexed-dataset prefix (PREFIX.bin/.idx) nor a file/directory")
    if not is_prefix and tokenizer is None:
        raise ConfigError(f"data={data} is raw text but no tokenizer is known: the checkpoint carries no "
                          "tokenizer/ directory; set tokenizer=<path>")
    cd = load_calibration_data(data, num_samples, seq_length, seed=seed,
                               tokenizer=str(tokenizer) if tokenizer is not None else None)
    return cd.tokens.long(), cd.mask.bool()


def perplexity_of(model, tokens: torch.Tensor, mask: Optional[torch.Tensor], micro_batch_size: int, ctx) -> LossSums:
    """Masked next-token loss of ``model`` on windows, each DP replica scoring its share. Collective."""
    idx = torch.tensor_split(torch.arange(tokens.shape[0]), ctx.dp_size)[ctx.dp_rank]
    shard_mask = None if mask is None else mask[idx]
    return lm_loss_sums(model, window_batches(tokens[idx], shard_mask, micro_batch_size), dp_group=ctx.dp_group)


def evaluate_perplexity(cfg) -> dict:
    """Run an :class:`~nemo_minitron.eval.config.EvaluateConfig`'s perplexity part; returns the result. Collective."""
    from nemo_minitron.checkpoint import tokenizer_path

    ckpt = resolve_checkpoint(cfg.checkpoint, cfg.checkpoint_format, cfg.work_dir)
    model, _, ctx = load_model(ckpt, cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size)
    tok = cfg.tokenizer or tokenizer_path(ckpt)
    tokens, mask = eval_windows(cfg.data_path, cfg.num_samples, cfg.seq_length, cfg.seed, tok)
    sums = perplexity_of(model, tokens, mask, cfg.micro_batch_size, ctx)
    result = {"checkpoint": str(cfg.checkpoint), "data": str(cfg.data_path), "tp": ctx.tp_size, "pp": ctx.pp_size,
              "dp": ctx.dp_size, "num_samples": int(tokens.shape[0]), "seq_length": int(tokens.shape[1]),
              **sums.to_dict()}
    log.info("%s on %s: loss %.4f, perplexity %.3f over %d tokens (TP=%d PP=%d DP=%d)", cfg.checkpoint, cfg.data_path,
             sums.loss, sums.ppl, int(sums.tokens), ctx.tp_size, ctx.pp_size, ctx.dp_size)
    return {"result": result, "model": model, "ckpt": ckpt, "ctx": ctx}
