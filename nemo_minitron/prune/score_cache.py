"""The importance-score cache: scores, layer-removal losses and validation tokens of one checkpoint.

A cache lets a second prune of the same checkpoint (other targets, another depth method) skip the
calibration pass. It is keyed by the architecture, the checkpoint's creation time and every setting
that changes the scores; a cache made with other settings is ignored with a warning. Rank 0 writes
it atomically; every rank reads it (``weights_only=True``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from nemo_minitron.checkpoint import read_metadata
from nemo_minitron.config.model import ModelConfig
from nemo_minitron.config.prune import PruneConfig
from nemo_minitron.logging import get_logger

log = get_logger(__name__)

CACHE_VERSION = 2
"""Bumped whenever the stored layout changes (an older cache is then recomputed)."""
IDENTITY_KEYS = ("version", "model", "checkpoint_created", "seq_aggregation", "batch_aggregation", "mask_padding")
"""Key fields that must match even when the run gives no calibration data (a cache-only re-run)."""


def cache_key(cfg: ModelConfig, p: PruneConfig) -> dict[str, Any]:
    """Everything a cached result depends on."""
    meta = read_metadata(cfg.restore_from_path)
    return {"version": CACHE_VERSION, "model": cfg.arch_dict(), "checkpoint_created": meta.get("created_unix"),
            "calib_data": p.calib_data, "num_calib_size": p.num_calib_size, "calib_seq_length": p.calib_seq_length,
            "calib_seed": p.calib_seed, "num_val_samples": p.num_val_samples, "val_data": p.val_data,
            "seq_aggregation": p.seq_aggregation,
            "batch_aggregation": p.batch_aggregation, "mask_padding": p.mask_padding}


def load_cache(path: str, key: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Cached scores + validation tokens if ``path`` exists and was made with the same settings."""
    if not Path(path).is_file():
        return None
    data = torch.load(path, map_location="cpu", weights_only=True)
    saved = data.get("key") or {}
    # without calib_data (cache-only re-run) the cached calibration settings are accepted as they are
    fields = key if key.get("calib_data") else {k: v for k, v in key.items()
                                                  if k in IDENTITY_KEYS or (k == "val_data" and v)}
    diff = sorted(k for k in fields if saved.get(k) != key[k])
    if diff:
        log.warning("importance cache %s was made with other settings (%s); recomputing", path, ", ".join(diff))
        return None
    return data


def save_cache(path: str, key: dict[str, Any], scores, val) -> None:
    """Rank 0 writes ``scores`` (an ImportanceScores or None) and the validation batch atomically."""
    if dist.get_rank() != 0:
        return
    data = {"key": key, "scores": scores.to_dict() if scores is not None else None,
            "val_tokens": None if val is None else val.tokens, "val_mask": None if val is None else val.mask}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(data, tmp)
    tmp.replace(path)
    log.info("importance scores cached in %s", path)
