"""Exact importance statistics under sequence parallelism.

With sequence parallelism every TP rank holds ``S / TP`` consecutive positions of the hidden states
at the norm outputs and the layer boundaries (``[S/TP, B, h]``). A per-sample aggregate over the
sequence (mean of ``|x|``, L2 norm, variance) is not the combination of per-shard aggregates, so the
shards' masked **sums and counts** are all-reduced over the TP group first and the division, square
root or variance is taken afterwards: the result equals :func:`~nemo_minitron.prune.importance.seq_aggregate`
of the full sequence (up to summation order), on every TP rank.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from nemo_minitron.prune.importance import AGGREGATORS


def local_mask(mask: Optional[torch.Tensor], rank: int, size: int) -> Optional[torch.Tensor]:
    """The TP rank's positions of a full ``[B, S]`` mask (sequence parallelism splits S into equal blocks)."""
    if mask is None or size == 1:
        return mask
    seq = mask.shape[1]
    if seq % size:
        raise ValueError(f"sequence length {seq} is not divisible by the tensor-parallel size {size}")
    block = seq // size
    return mask[:, rank * block:(rank + 1) * block]


def sequence_parallel_aggregate(x: torch.Tensor, mask: Optional[torch.Tensor], how: str,
                                group: Optional[dist.ProcessGroup]) -> tuple[torch.Tensor, torch.Tensor]:
    """``seq_aggregate`` of the full sequence from this rank's shard ``x`` ``[S/TP, B, C]`` (collective over ``group``).

    ``mask`` is this rank's ``[B, S/TP]`` block (:func:`local_mask`) or None. Returns ``([B, C]`` values,
    ``[B]`` sample-valid flags), identical on every rank of ``group``.
    """
    if how not in AGGREGATORS:
        raise ValueError(f"sequence aggregator {how!r} must be one of {list(AGGREGATORS)}")
    x = x.double()
    seq, batch, channels = x.shape
    if mask is None:
        m = torch.ones(seq, batch, dtype=x.dtype, device=x.device)
    else:
        if tuple(mask.shape) != (batch, seq):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match activation shard [S={seq}, B={batch}]")
        m = mask.to(device=x.device, dtype=x.dtype).t()
    if how == "mean":
        sums = [torch.einsum("sb,sbc->bc", m, x.abs())]
    elif how == "l2":
        sums = [torch.einsum("sb,sbc->bc", m, x.square())]
    else:
        sums = [torch.einsum("sb,sbc->bc", m, x), torch.einsum("sb,sbc->bc", m, x.square())]
    packed = torch.cat([*sums, m.sum(0).unsqueeze(-1)], dim=-1)  # one collective: [B, k·C + 1]
    dist.all_reduce(packed, group=group)
    n = packed[:, -1:]
    valid = n.squeeze(-1) > 0
    n_safe = n.clamp_min(1.0)
    if how == "mean":
        out = packed[:, :channels] / n_safe
    elif how == "l2":
        out = packed[:, :channels].sqrt()
    else:
        mean = packed[:, :channels] / n_safe
        out = (packed[:, channels:2 * channels] / n_safe - mean.square()).clamp_min(0.0)
    return (out * valid.unsqueeze(-1).to(out.dtype)).float(), valid
