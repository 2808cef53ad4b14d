"""``pruning_report.json`` and the per-layer importance plot, written atomically.

Layers are 0-based everywhere inside the library; the report and the plot show them as megatron /
NeMo layer numbers (1-indexed). :func:`shown` is the one place that converts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from nemo_minitron.atomic import atomic_file, write_text_atomic
from nemo_minitron.logging import get_logger

log = get_logger(__name__)


def shown(layer: int) -> int:
    """The 1-indexed layer number shown to users for the 0-based layer index ``layer``."""
    return layer + 1


def _by_number(per_layer: dict[int, Any]) -> dict[str, Any]:
    return {str(shown(k)): v for k, v in sorted(per_layer.items())}


@dataclass
class PruneResult:
    """Everything one prune produced, as the report needs it."""

    original: Any
    """ModelConfig of the input checkpoint (at the run's layout)."""
    pruned: Any
    """ModelConfig of the pruned checkpoint."""
    settings: Any
    """The PruneConfig the run used."""
    plan: Any
    """The PrunePlan that was applied (0-based layer keys)."""
    dropped_layers: list[int]
    """0-based indices of the removed layers."""
    scores: Any = None
    """ImportanceScores (None when only ``drop_layers`` was given without calibration data)."""
    loss_before: Optional[float] = None
    """Validation LM loss of the original model (None without validation samples)."""
    loss_after: Optional[float] = None
    """Validation LM loss of the pruned model."""
    val_samples: int = 0
    """Number of validation windows."""
    val_seq_length: Optional[int] = None
    """Tokens per validation window."""
    ranking: Optional[list[dict[str, Any]]] = None
    """Budget-search candidates, best first (``dropped_layers`` 0-based), or None without a search."""
    calib_seconds: Optional[float] = None
    """Wall time of the calibration pass (None when the scores came from the cache)."""
    seconds: float = 0.0
    """Wall time of the whole prune."""
    world_size: int = 1
    """Processes that ran the prune."""
    sharded: bool = True
    """True when surgery and saving ran at the run's layout (False: on a replicated full copy)."""


def _dropped(n: int, kept: list[int]) -> list[int]:
    keep = set(kept)
    return [i for i in range(n) if i not in keep]


def _ppl(loss: Optional[float]) -> Optional[float]:
    """:func:`nemo_minitron.models.forward.perplexity` of ``loss`` (None when no loss was measured)."""
    from nemo_minitron.models.forward import perplexity

    return None if loss is None else perplexity(loss)


def build_report(r: PruneResult) -> dict[str, Any]:
    """The ``pruning_report.json`` content (layers shown 1-indexed)."""
    from nemo_minitron.models.params import count_parameters

    cfg, plan, p = r.original, r.plan, r.settings
    kept = {"hidden": plan.hidden, "ffn": _by_number(plan.ffn), "query_groups": _by_number(plan.groups),
            "heads": _by_number(plan.heads),
            "kept_layers": None if plan.keep_layers is None else [shown(i) for i in plan.keep_layers]}
    dropped = {
        "hidden": None if plan.hidden is None else _dropped(cfg.hidden_size, plan.hidden),
        "ffn": _by_number({k: _dropped(cfg.ffn_hidden_size, v) for k, v in plan.ffn.items()}),
        "query_groups": _by_number({k: _dropped(cfg.query_groups, v) for k, v in plan.groups.items()}),
        "heads": _by_number({k: _dropped(cfg.num_attention_heads, v) for k, v in plan.heads.items()}),
        "layers": [shown(i) for i in r.dropped_layers],
    }
    ranking = None if r.ranking is None else [
        {**c, "dropped_layers": [shown(i) for i in c["dropped_layers"]]} for c in r.ranking]
    return {
        "original_config": cfg.arch_dict() | {"name": cfg.name},
        "pruned_config": r.pruned.arch_dict(),
        "params": {"original": count_parameters(cfg).to_dict(), "pruned": count_parameters(r.pruned).to_dict()},
        "targets": {k: getattr(p, k) for k in ("ffn_hidden_size", "num_attention_heads", "num_query_groups",
                                                "hidden_size", "num_layers", "drop_layers", "target_params")},
        "kept": kept,
        "dropped": dropped,
        "scores": scores_section(r.scores),
        "validation": {
            "num_samples": r.val_samples, "seq_length": r.val_seq_length,
            "loss_before": r.loss_before, "perplexity_before": _ppl(r.loss_before),
            "loss_after": r.loss_after, "perplexity_after": _ppl(r.loss_after),
        },
        "search": ranking,
        "importance": {"seq_aggregation": p.seq_aggregation, "batch_aggregation": p.batch_aggregation,
                       "mask_padding": p.mask_padding, "depth_method": p.depth_method,
                       "num_calib_size": p.num_calib_size, "calib_seq_length": p.calib_seq_length,
                       "calib_data": p.calib_data, "val_data": p.val_data},
        "layout": {"tensor_model_parallel_size": cfg.tensor_model_parallel_size,
                   "pipeline_model_parallel_size": cfg.pipeline_model_parallel_size,
                   "world_size": r.world_size, "sharded_surgery": r.sharded},
        "timing_seconds": {"calibration": r.calib_seconds, "total": r.seconds},
    }


def _plain(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    return write_text_atomic(path, json.dumps(_plain(data), indent=2))


def scores_section(scores) -> dict[str, Any]:
    """Every score in the report: per-layer neurons, heads, groups, hidden sites and layer scores."""
    if scores is None:
        return {}
    return {
        "ffn_neurons": _by_number(scores.ffn),
        "attention_heads": _by_number({n: scores.heads(n) for n in scores.attn_channels}),
        "query_groups": _by_number({n: scores.groups(n) for n in scores.attn_channels}),
        "hidden_channels": scores.hidden,
        "hidden_channels_per_site": _by_number(scores.hidden_sites),
        "layer_cosine": _by_number(scores.layer_cosine),
        "layer_removal_loss": _by_number(scores.layer_loss),
        "block_removal_loss": {size: _by_number(starts) for size, starts in scores.block_loss.items()},
    }


def plot_layers(path: str | os.PathLike, scores, dropped: list[int]) -> Path | None:
    """Bar chart of per-layer importance (1 − cos, and removal loss when known); dropped (0-based) in red."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        log.warning("matplotlib is not installed: no layer importance plot (pip install matplotlib, or the [hf] extra)")
        return None
    layers = sorted(scores.layer_cosine)
    colors = ["tab:red" if n in set(dropped) else "tab:blue" for n in layers]
    xs = [shown(n) for n in layers]
    blocks = scores.block_loss.get(len(dropped)) if dropped else None
    panels = 1 + bool(scores.layer_loss) + bool(blocks)
    fig, axes = plt.subplots(panels, 1, figsize=(max(6, len(layers) * 0.3), 3 * panels), squeeze=False)
    axes[0][0].bar(xs, [scores.layer_cosine[n] for n in layers], color=colors)
    axes[0][0].set_ylabel("1 - cos(in, out)")
    axes[0][0].set_title("per-layer importance (red: dropped)")
    row = 1
    if scores.layer_loss:
        axes[row][0].bar(xs, [scores.layer_loss.get(n, float("nan")) for n in layers], color=colors)
        axes[row][0].set_ylabel("val loss without layer")
        row += 1
    if blocks:
        starts = sorted(blocks)
        axes[row][0].bar([shown(s) for s in starts], [blocks[s] for s in starts],
                         color=["tab:red" if s == min(dropped) else "tab:gray" for s in starts])
        axes[row][0].set_ylabel(f"val loss without\n{len(dropped)} layers from here")
    axes[-1][0].set_xlabel("layer (1-indexed)")
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
