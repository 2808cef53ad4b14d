"""Schema of ``examples/megatron_prune.py`` (YAML: ``conf/megatron_prune.yaml``).

Key names follow NeMo's ``megatron_gpt_prune.yaml`` (``prune.ffn_hidden_size``, ``prune.drop_layers``,
``prune.num_calib_size``, ``export.save_path``) so the NeMo pruning tutorial's commands carry over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from nemo_minitron.config.model import RuntimeModelConfig, arch_fields
from nemo_minitron.config.schemas import ExportConfig

__all__ = ["ExportConfig", "MegatronPruneConfig", "PruneConfig"]

_TARGETS = ("ffn_hidden_size", "num_attention_heads", "num_query_groups", "hidden_size", "num_layers")


@dataclass
class PruneConfig:
    """What to prune to, how to score importance and where the calibration data comes from."""

    ffn_hidden_size: Optional[int] = None
    """Target MLP width (every layer cut to the same width); null keeps it. Must be divisible by TP."""

    num_attention_heads: Optional[int] = None
    """Target query heads; a multiple of the (target) query groups, the same count kept in every group."""

    num_query_groups: Optional[int] = None
    """Target KV groups; whole groups (their q heads, k and v) are removed. Must be divisible by TP."""

    hidden_size: Optional[int] = None
    """Target embedding width (one global channel ranking for the whole network)."""

    num_layers: Optional[int] = None
    """Target depth; which layers go is decided by ``depth_method``."""

    drop_layers: list[int] = field(default_factory=list)
    """1-indexed layers to drop; exclusive with every other target (needs no calibration)."""

    target_params: Optional[int] = None
    """Parameter budget: search candidate shapes below it, rank them by validation loss, export the best."""

    calib_data: Optional[str] = None
    """Calibration source: mmap dataset prefix, raw .txt/.jsonl/WikiText .raw file, or a .pt {tokens, mask} file."""

    num_calib_size: int = 1024
    """Calibration samples (sequences of ``calib_seq_length`` tokens)."""

    calib_seq_length: int = 256
    """Tokens per calibration sample."""

    calib_batch_size: int = 4
    """Micro-batch size of the calibration and validation forward passes."""

    calib_seed: int = 1234
    """Seed of the calibration sampler."""

    num_val_samples: int = 32
    """Validation samples for loss/perplexity before and after pruning (and for loss-based layer selection)."""

    val_data: Optional[str] = None
    """Validation source (same formats as calib_data); null holds back extra samples drawn from calib_data."""

    seq_aggregation: str = "mean"
    """Aggregator over sequence positions: mean (of |x|), l2 or var."""

    batch_aggregation: str = "l2"
    """Aggregator over calibration samples: l2, mean or var."""

    mask_padding: bool = True
    """Ignore positions the calibration mask marks invalid (false reproduces ModelOpt's unmasked mean)."""

    depth_method: str = "block_loss"
    """How ``num_layers`` picks layers: block_loss (drop the contiguous block, excluding the last layer, with
    the lowest validation loss), layer_loss (drop the layers whose single removal hurts least) or cosine
    (lowest 1 − cos(input, output), one pass)."""

    importance_cache: Optional[str] = None
    """File with cached scores: read if it matches the checkpoint and calibration settings, else written."""

    search_top_k: int = 8
    """Budget search: how many candidates closest to ``target_params`` are pruned and evaluated."""

    search_tolerance: float = 0.05
    """Budget search: candidates may be up to this fraction below ``target_params``."""

    search_max_width_pruning: float = 0.5
    """Budget search: smallest width considered, as a fraction removed from each width axis."""

    search_max_depth_pruning: float = 0.5
    """Budget search: largest fraction of layers removed."""

    search_hidden_divisor: int = 64
    """Budget search: hidden sizes are multiples of this."""

    search_ffn_divisor: int = 64
    """Budget search: MLP widths are multiples of this (and of TP)."""

    search_prune_heads: bool = False
    """Budget search: also try fewer heads per group (Minitron-2 keeps all heads by default)."""

    plot: bool = True
    """Write ``layer_importance.png`` next to the report."""


@dataclass
class MegatronPruneConfig:
    """``examples/megatron_prune.py``: Minitron width/depth pruning of a megatron checkpoint."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        f"model.{k}": "the architecture is read from the checkpoint (model.restore_from_path)"
        + (f"; the pruning target is prune.{k}" if k in _TARGETS else "")
        for k in arch_fields()
    }

    model: RuntimeModelConfig = field(default_factory=RuntimeModelConfig)
    """Checkpoint and runtime layout (TP/PP, precision, seed); the architecture is read from the checkpoint."""

    prune: PruneConfig = field(default_factory=PruneConfig)
    """Targets, importance and calibration settings."""

    export: ExportConfig = field(default_factory=ExportConfig)
    """Output location (export.save_path is required)."""


def register(cs) -> None:
    """Register the pruning schemas."""
    cs.store(name="megatron_prune_schema", node=MegatronPruneConfig)
