"""Pure aggregation math for activation-based importance (Minitron, arXiv 2407.14679 §2.2).

An activation ``x`` of shape ``[S, B, C]`` (megatron layout) is first reduced over the sequence
positions that the calibration mask marks valid (one value per sample and channel), then over
samples. Both axes take one of three aggregators (paper Table 11):

* ``mean``: ``(1/n) Σ |v|``
* ``l2``:   ``sqrt(Σ v²)``
* ``var``:  ``(1/n) Σ (v − v̄)²``

The default, (sequence = ``mean``, batch = ``l2``), is the paper's best and ModelOpt's fixed choice.
The batch axis is kept as three running sums (``Σ a``, ``Σ a²``, ``n``) in float64 so that statistics
from data-parallel replicas and from any number of forward calls combine exactly by addition.
"""

from __future__ import annotations

import torch

AGGREGATORS = ("mean", "l2", "var")


def seq_aggregate(x: torch.Tensor, mask: torch.Tensor | None, how: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce ``x`` ``[S, B, C]`` over valid sequence positions → (``[B, C]`` fp32 values, ``[B]`` sample-valid flags).

    ``mask`` is ``[B, S]`` (True = position counts) or None (every position counts, ModelOpt's behaviour).
    Samples without a single valid position get value 0 and flag False.
    """
    if how not in AGGREGATORS:
        raise ValueError(f"sequence aggregator {how!r} must be one of {list(AGGREGATORS)}")
    x = x.float()
    seq, batch = x.shape[0], x.shape[1]
    if mask is None:
        m = torch.ones(seq, batch, 1, dtype=x.dtype, device=x.device)
    else:
        if tuple(mask.shape) != (batch, seq):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match activation [S={seq}, B={batch}]")
        m = mask.to(device=x.device, dtype=x.dtype).t().unsqueeze(-1)
    n = m.sum(0)  # [B, 1]
    valid = n.squeeze(-1) > 0
    n_safe = n.clamp_min(1.0)
    if how == "mean":  # masked sums as a batched contraction over S: one pass, no [S, B, C] temporaries
        out = torch.einsum("sb,sbc->bc", m.squeeze(-1), x.abs()) / n_safe
    elif how == "l2":
        out = torch.einsum("sb,sbc->bc", m.squeeze(-1), x.square()).sqrt()
    else:
        mean = (x * m).sum(0) / n_safe
        out = ((x - mean).square() * m).sum(0) / n_safe
    return out * valid.unsqueeze(-1).to(out.dtype), valid


class BatchAccumulator:
    """Running ``Σ a``, ``Σ a²`` and sample count of per-sample channel values ``a`` (float64)."""

    def __init__(self, channels: int, device: torch.device | str = "cpu"):
        self.state = torch.zeros(2, channels, dtype=torch.float64, device=device)
        self.count = torch.zeros(1, dtype=torch.float64, device=device)

    def update(self, values: torch.Tensor, valid: torch.Tensor) -> None:
        """Add per-sample values ``[B, C]`` of the samples flagged valid."""
        w = valid.to(torch.float64).unsqueeze(-1)  # multiply instead of indexing: no host sync on GPUs
        v = values.double() * w
        self.state[0] += v.sum(0)
        self.state[1] += v.square().sum(0)
        self.count += w.sum()

    def packed(self) -> torch.Tensor:
        """State as one flat tensor (for all-reduce): ``[Σa (C), Σa² (C), n]``."""
        return torch.cat([self.state.flatten(), self.count])

    @staticmethod
    def finalize_packed(packed: torch.Tensor, how: str = "l2") -> torch.Tensor:
        """Scores ``[C]`` (float64) from a packed (possibly all-reduced) state."""
        c = (packed.numel() - 1) // 2
        return finalize(packed[:c], packed[c:2 * c], packed[-1], how)


def finalize(s1: torch.Tensor, s2: torch.Tensor, n: torch.Tensor | float, how: str = "l2") -> torch.Tensor:
    """Batch-axis aggregate from ``Σ a`` (``s1``), ``Σ a²`` (``s2``) and the sample count ``n``."""
    if how not in AGGREGATORS:
        raise ValueError(f"batch aggregator {how!r} must be one of {list(AGGREGATORS)}")
    n = torch.as_tensor(n, dtype=torch.float64).clamp_min(1.0)
    if how == "l2":
        return s2.double().sqrt()
    if how == "mean":
        return s1.double().abs() / n
    mean = s1.double() / n
    return (s2.double() / n - mean.square()).clamp_min(0.0)


def aggregate(x: torch.Tensor, mask: torch.Tensor | None, seq: str = "mean", batch: str = "l2") -> torch.Tensor:
    """One-shot reference: channel scores ``[C]`` of ``x`` ``[S, B, C]`` (used by tests and small tools)."""
    values, valid = seq_aggregate(x, mask, seq)
    acc = BatchAccumulator(values.shape[-1])
    acc.update(values.cpu(), valid.cpu())
    return BatchAccumulator.finalize_packed(acc.packed(), batch)


def head_scores(channel_scores: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Per-head score: L2 norm of the head's ``d`` channel scores (ModelOpt ≥0.35 definition)."""
    return channel_scores.view(num_heads, -1).norm(dim=1)


def group_scores(channel_scores: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per-query-group score on megatron's group-major ``linear_proj`` input: L2 over the group's heads' channels."""
    return channel_scores.view(num_groups, -1).norm(dim=1)


def cosine_stats(h_in: torch.Tensor, h_out: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ (1 − cos(h_in, h_out)), count)`` over valid tokens of ``[S, B, h]`` hidden states (float64 sums)."""
    a, b = h_in.float(), h_out.float()
    # three reductions over channels, no [S, B, h] temporaries (cosine_similarity normalises copies first)
    dot, na, nb = (torch.einsum("sbc,sbc->sb", u, v) for u, v in ((a, b), (a, a), (b, b)))
    cos = dot / (na * nb).sqrt().clamp_min(1e-8)  # [S, B]
    if mask is None:
        m = torch.ones_like(cos)
    else:
        m = mask.to(device=cos.device, dtype=cos.dtype).t()
    return ((1.0 - cos) * m).sum().double(), m.sum().double()
