"""Perplexity of a checkpoint on held-out megatron data (the demo's before/after table).

Samples are megatron ``GPTDataset`` windows (``seq_length`` tokens, same order for every model, so
every checkpoint sees identical text); the loss is the mean next-token cross-entropy over positions
whose ``loss_mask`` is set (:func:`nemo_minitron.models.forward.lm_loss_sums`, the package's one
forward engine and perplexity definition), so any TP/PP layout gives the same number.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from nemo_minitron.logging import get_logger

log = get_logger(__name__)


def heldout_batches(data_prefix: str, seq_length: int, num_samples: int, micro_batch_size: int = 4,
                    cache_dir: Optional[str] = None, seed: int = 1234) -> list[dict]:
    """``num_samples`` windows of ``data_prefix`` (all of its documents) as micro-batches."""
    from nemo_minitron.data.gpt_data import DataConfig, build_dataloader, build_datasets

    dcfg = DataConfig(data_prefix=[data_prefix], split="1,0,0", seq_length=seq_length, index_cache_dir=cache_dir,
                      seed=seed)
    train, _, _ = build_datasets(dcfg, {"train": num_samples})
    out = []
    for batch in build_dataloader(train, micro_batch_size, 0, 1):
        out.append(batch)
        if len(out) * micro_batch_size >= num_samples:
            break
    return out


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, batches: list[dict]) -> dict:
    """Token-weighted mean LM loss and perplexity of ``model`` (this rank's stage) on ``batches``. Collective."""
    from nemo_minitron.models.forward import lm_loss_sums

    return lm_loss_sums(model, batches).to_dict()


def evaluate_checkpoint(path: str | os.PathLike, batches: list[dict], tp: int = 1, pp: int = 1) -> dict:
    """Build and load the checkpoint at ``path`` at TP × PP, then :func:`evaluate_model`. Collective."""
    from nemo_minitron import runtime
    from nemo_minitron.checkpoint import load_checkpoint, load_model_config
    from nemo_minitron.models.builder import build_gpt_model

    cfg = load_model_config(path).replace(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    runtime.init_model_parallel(tp, pp, seed=cfg.seed)
    model = build_gpt_model(cfg)
    load_checkpoint(model, cfg, path)
    result = evaluate_model(model, batches)
    log.info("%s: loss %.4f, perplexity %.2f over %d tokens", Path(path).name, result["loss"], result["ppl"],
             result["tokens"])
    return result
