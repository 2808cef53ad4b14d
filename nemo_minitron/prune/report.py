"""``pruning_report.json`` and the per-layer importance plot, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from nemo_minitron.logging import get_logger

log = get_logger(__name__)


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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_plain(data), indent=2))
    os.replace(tmp, path)
    return path


def scores_section(scores) -> dict[str, Any]:
    """Every score in the report: per-layer neurons, heads, groups, hidden sites and layer scores."""
    if scores is None:
        return {}
    return {
        "ffn_neurons": scores.ffn,
        "attention_heads": {n: scores.heads(n) for n in scores.attn_channels},
        "query_groups": {n: scores.groups(n) for n in scores.attn_channels},
        "hidden_channels": scores.hidden,
        "hidden_channels_per_site": scores.hidden_sites,
        "layer_cosine": scores.layer_cosine,
        "layer_removal_loss": scores.layer_loss,
        "block_removal_loss": scores.block_loss,
    }


def plot_layers(path: str | os.PathLike, scores, dropped: list[int]) -> Path | None:
    """Bar chart of per-layer importance (1 − cos, and removal loss when known); dropped layers in red."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        log.warning("matplotlib is not installed: no layer importance plot (pip install matplotlib, or the [hf] extra)")
        return None
    layers = sorted(scores.layer_cosine)
    colors = ["tab:red" if n in set(dropped) else "tab:blue" for n in layers]
    blocks = scores.block_loss.get(len(dropped)) if dropped else None
    panels = 1 + bool(scores.layer_loss) + bool(blocks)
    fig, axes = plt.subplots(panels, 1, figsize=(max(6, len(layers) * 0.3), 3 * panels), squeeze=False)
    axes[0][0].bar(layers, [scores.layer_cosine[n] for n in layers], color=colors)
    axes[0][0].set_ylabel("1 - cos(in, out)")
    axes[0][0].set_title("per-layer importance (red: dropped)")
    row = 1
    if scores.layer_loss:
        axes[row][0].bar(layers, [scores.layer_loss.get(n, float("nan")) for n in layers], color=colors)
        axes[row][0].set_ylabel("val loss without layer")
        row += 1
    if blocks:
        starts = sorted(blocks)
        axes[row][0].bar(starts, [blocks[s] for s in starts],
                         color=["tab:red" if s == min(dropped) else "tab:gray" for s in starts])
        axes[row][0].set_ylabel(f"val loss without\n{len(dropped)} layers from here")
    axes[-1][0].set_xlabel("layer (1-indexed)")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
