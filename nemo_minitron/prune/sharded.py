"""Surgery at the user's TP × PP layout: never more than this rank's shard plus one full tensor.

The pruned model is built at the same layout as the original one; its weights are filled tensor by
tensor. For a decoder-layer tensor that is split over TP, the owning stage all-gathers the one
tensor over its TP group (``gather → full``), applies the same full-tensor slicing as a TP=1 prune
(:func:`~nemo_minitron.prune.surgery.prune_layer_tensor`) and keeps its TP rank's part of the result
(``full → shard``), so kept heads/neurons are re-balanced over TP ranks exactly as a TP=1 prune and a
later reshard would place them. Layers that move to another pipeline stage (depth pruning changes
which stage owns which layer) are sent point to point, one tensor at a time, to the same TP rank of
the new owner. Tensors outside the layers only lose hidden channels, an axis that is never sharded,
so every rank slices its own shard locally. The result is bit-identical to a TP=1 prune.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from nemo_minitron.config.model import ModelConfig
from nemo_minitron.prune.surgery import _LAYER, PrunePlan, prune_global_tensor, prune_layer_tensor


def _is_glu_fc1(name: str, cfg: ModelConfig) -> bool:
    return cfg.gated_linear_unit and name in ("mlp.linear_fc1.weight", "mlp.linear_fc1.bias")


def gather_full(shard: torch.Tensor, dim: int, glu: bool, ctx) -> torch.Tensor:
    """The full tensor from every TP rank's ``shard`` split along ``dim``.

    A gated ``linear_fc1`` shard is ``[gate_r; up_r]``: the full tensor is rebuilt as ``[gate; up]``.
    """
    if ctx.tp_size == 1:
        return shard
    parts = [torch.empty_like(shard) for _ in range(ctx.tp_size)]
    dist.all_gather(parts, shard.contiguous(), group=ctx.tp_group)
    if glu:
        halves = [p.chunk(2, dim=0) for p in parts]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(parts, dim=dim)


def shard_of(full: torch.Tensor, dim: int, glu: bool, tp_rank: int, tp_size: int) -> torch.Tensor:
    """TP rank ``tp_rank``'s part of ``full`` (inverse of :func:`gather_full`)."""
    if tp_size == 1:
        return full
    if glu:
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp_size, dim=0)[tp_rank], up.chunk(tp_size, dim=0)[tp_rank]], dim=0)
    return full.chunk(tp_size, dim=dim)[tp_rank]


def _partition(model: torch.nn.Module) -> dict[str, Optional[int]]:
    """Parameter name → TP partition dim (None when replicated over TP)."""
    return {n: (p.partition_dim if getattr(p, "tensor_model_parallel", False) else None)
            for n, p in model.named_parameters()}


def _layer_numbers(model: torch.nn.Module) -> dict[int, int]:
    """0-based global layer index → local index of the layers on this stage."""
    return {int(layer.layer_number) - 1: i for i, layer in enumerate(model.decoder.layers)}


def _stage_owners(local: dict[int, int], ctx) -> dict[int, int]:
    """0-based global layer index → pipeline stage holding it (gathered over the PP group)."""
    if ctx.pp_size == 1:
        return {g: 0 for g in local}
    stages: list = [None] * ctx.pp_size
    dist.all_gather_object(stages, sorted(local), group=ctx.pp_group)
    return {g: s for s, layers in enumerate(stages) for g in layers}


@torch.no_grad()
def apply_plan_sharded(old: torch.nn.Module, new: torch.nn.Module, cfg: ModelConfig, plan: PrunePlan, ctx) -> None:
    """Fill ``new`` (built from ``pruned_config(cfg, plan)`` at ``ctx``'s layout) from ``old``. Collective.

    Every rank of the TP × PP grid must call it; data-parallel replicas work independently.
    """
    old_m, new_m = getattr(old, "module", old), getattr(new, "module", new)
    old_sd, new_sd = old_m.state_dict(), new_m.state_dict()
    part = _partition(old_m)
    for key, dst in new_sd.items():  # embedding, output layer, final norm: local slices
        if isinstance(dst, torch.Tensor) and not key.endswith("_extra_state") and not _LAYER.match(key):
            dst.copy_(prune_global_tensor(key, old_sd[key], plan))
    keep = plan.keep_layers if plan.keep_layers is not None else list(range(cfg.num_layers))
    old_local, new_local = _layer_numbers(old_m), _layer_numbers(new_m)
    old_owner, new_owner = _stage_owners(old_local, ctx), _stage_owners(new_local, ctx)
    pp_ranks = dist.get_process_group_ranks(ctx.pp_group) if ctx.pp_size > 1 else [dist.get_rank()]
    names = sorted(n[len("decoder.layers.0."):] for n in new_sd
                   if n.startswith("decoder.layers.0.") and not n.endswith("_extra_state"))
    for j, orig in enumerate(keep):  # same order on every rank: the point-to-point pairs match up
        src, dst_stage = old_owner[orig], new_owner[j]
        if ctx.pp_rank not in (src, dst_stage):
            continue
        for name in names:
            out = new_sd[f"decoder.layers.{new_local[j]}.{name}"] if ctx.pp_rank == dst_stage else None
            if ctx.pp_rank == src:
                key = f"decoder.layers.{old_local[orig]}.{name}"
                dim, glu = part.get(key), _is_glu_fc1(name, cfg)
                value = old_sd[key]
                if dim is not None:
                    value = gather_full(value, dim, glu, ctx)
                value = prune_layer_tensor(name, value, orig, cfg, plan)
                if dim is not None:
                    value = shard_of(value, dim, glu, ctx.tp_rank, ctx.tp_size)
                if out is not None:
                    out.copy_(value)
                else:
                    dist.send(value.contiguous(), dst=pp_ranks[dst_stage])
            else:
                buf = torch.empty_like(out)
                dist.recv(buf, src=pp_ranks[src])
                out.copy_(buf)
