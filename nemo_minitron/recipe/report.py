"""The demo's outputs: the results table (markdown) and the loss-curve plot (KD vs LM-only, teacher line).

Curves are the students' validation LM loss as the trainer logged it to TensorBoard (``val/loss``, on the
training data's held-out documents), starting from the pruned student's loss on the same windows; the
teacher's loss on those windows is drawn as a horizontal line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from nemo_minitron.logging import get_logger

log = get_logger(__name__)


def table(rows: list[dict], title: str) -> list[str]:
    """Markdown lines: one row per model (params, training tokens, held-out loss, perplexity)."""
    lines = [title, "", f"| {'model':40s} | {'params':>8s} | {'train tokens':>12s} | {'loss':>7s} | {'perplexity':>10s} |",
             f"|{'-' * 42}|{'-' * 9}:|{'-' * 13}:|{'-' * 8}:|{'-' * 11}:|"]
    for r in rows:
        tokens = f"{r['train_tokens']:,}" if r.get("train_tokens") else "-"
        lines.append(f"| {r['model']:40s} | {r['params'] / 1e6:7.1f}M | {tokens:>12s} | {r['loss']:7.4f} | "
                     f"{r['ppl']:10.2f} |")
    return lines


def read_curve(run_dir: str | os.PathLike, tag: str = "val/loss") -> list[tuple[int, float]]:
    """``(step, value)`` of one TensorBoard scalar of a run (the last value per step; [] without events)."""
    tb = Path(run_dir) / "tensorboard"
    if not tb.is_dir():
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    by_step = {e.step: e.value for e in acc.Scalars(tag)}
    return sorted(by_step.items())


def plot_curves(path: str | os.PathLike, curves: dict[str, list[tuple[int, float]]],
                lines: dict[str, float], start: Optional[float] = None) -> Optional[Path]:
    """Validation loss vs optimizer step per run, plus horizontal reference ``lines`` (e.g. the teacher).

    Every curve starts at ``start`` (the pruned student) when given. Written atomically; None without
    matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        log.warning("matplotlib is not installed: no loss-curve plot (pip install matplotlib, or the [hf] extra)")
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, points in curves.items():
        if start is not None:
            points = [(0, start), *points]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=name)
    styles = iter(["--", ":", "-."])
    for name, value in lines.items():
        ax.axhline(value, color="gray", linestyle=next(styles, "--"), label=f"{name} ({value:.3f})")
    ax.set_xlabel("optimizer step (same tokens per step for every run)")
    ax.set_ylabel("validation LM loss (nats/token)")
    ax.set_title("pruned student: KD vs LM-loss only")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
