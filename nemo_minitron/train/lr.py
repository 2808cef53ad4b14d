"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (or constant)."""

from __future__ import annotations

import math


def lr_at(step: int, max_lr: float, min_lr: float, warmup_steps: int, decay_steps: int,
          style: str = "CosineAnnealing") -> float:
    """Learning rate for optimizer step ``step`` (0-based: the LR used by the ``step+1``-th update).

    Warm-up rises linearly from ``max_lr / warmup_steps`` to ``max_lr`` over ``warmup_steps`` steps;
    cosine decay then falls from ``max_lr`` to ``min_lr`` at ``decay_steps`` and stays there.
    ``style="constant"`` keeps ``max_lr`` after warm-up.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if style == "constant":
        return max_lr
    span = max(1, decay_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
