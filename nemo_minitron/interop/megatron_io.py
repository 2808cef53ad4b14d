"""Fill a megatron-core GPT model from Hugging Face-named tensors, and read it back out, tensor by tensor.

Import builds the model for this rank's TP/PP slice (no random init), then walks the
:mod:`~nemo_minitron.interop.mapping` rules: each Hugging Face tensor is read lazily, merged
(QKV per group, ``[gate; up]``), sliced for this TP rank and copied into the parameter, so peak
memory is one copy of the (sharded) model plus one tensor. Every parameter must be written exactly
once and every source tensor consumed: anything unmatched is an error naming the keys, never a
silently left-at-init weight.

Export walks the same rules backwards on a TP=1, PP=1 model.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from nemo_minitron.config.model import ModelConfig
from nemo_minitron.interop.mapping import (
    Rule,
    hf_to_mcore,
    mcore_to_hf,
    merge_fc1,
    merge_qkv,
    model_rules,
    shard_for_rank,
)
from nemo_minitron.logging import get_logger
from nemo_minitron.models import names

log = get_logger(__name__)

#: Source tensors that carry no weights (recomputed buffers).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class UnmatchedTensorsError(KeyError):
    """Source and target tensor names do not match one to one (the message lists both sides)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def _tqdm(iterable, **kwargs):
    from tqdm.auto import tqdm

    from nemo_minitron.atomic import is_rank0

    return tqdm(iterable, disable=not is_rank0() or os.environ.get("NEMO_MINITRON_NO_PROGRESS") == "1", **kwargs)


def conversion_layout(tp: int, pp: int) -> tuple[int, int]:
    """The TP/PP to build with: the requested one when the running world has room for it, else (1, 1).

    A converted checkpoint loads at any layout, so converting in one process is always correct; a
    torchrun launch with ``tp * pp`` ranks spreads the model (and the memory) over the ranks.
    """
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    if world % (tp * pp) == 0:
        return tp, pp
    log.info("converting in %d process(es) at TP=1 PP=1; the checkpoint loads at TP=%d PP=%d (or any other)",
             world, tp, pp)
    return 1, 1


def build_model_for_conversion(cfg: ModelConfig, tp: int = 1, pp: int = 1, seed: int = 1234) -> torch.nn.Module:
    """(Re-)initialise model parallelism at ``tp`` × ``pp`` and build this rank's stage without random init."""
    from nemo_minitron import runtime
    from nemo_minitron.models.builder import build_gpt_model

    runtime.init_model_parallel(tp, pp, seed=seed)
    run_cfg = cfg.replace(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    run_cfg.validate()
    return build_gpt_model(run_cfg, perform_initialization=False)


def _stage_layers(module: torch.nn.Module) -> list[int]:
    """Global (0-based) indices of the transformer layers held by this pipeline stage, in local order."""
    return [layer.layer_number - 1 for layer in module.decoder.layers]


def _local_name(name: str, global_to_local: dict[int, int]) -> str:
    if name.startswith("decoder.layers."):
        rest = name[len("decoder.layers."):]
        idx, tail = rest.split(".", 1)
        return f"decoder.layers.{global_to_local[int(idx)]}.{tail}"
    return name


def canonical_tensors(state: dict) -> dict[str, torch.Tensor]:
    """Weight tensors of a state dict (either layer spec) keyed by canonical local-spec names.

    A Transformer Engine model names its fused norms ``linear_qkv.layer_norm_weight``; the rules use
    ``input_layernorm.weight`` (:mod:`nemo_minitron.models.names`). ``_extra_state`` entries are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if names.is_extra_state(k) or not isinstance(v, torch.Tensor):
            continue
        name = names.to_local(k)
        if name in out:
            raise UnmatchedTensorsError(f"state dict has both spellings of {name} ({k})")
        out[name] = v
    return out


def _named_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers that carry weights, under canonical names (no ``_extra_state``)."""
    return canonical_tensors(module.state_dict(keep_vars=True))


def stage_rules(module: torch.nn.Module, cfg: ModelConfig) -> tuple[list[Rule], dict[int, int]]:
    """The rules for the tensors of this rank's pipeline stage and the global→local layer index map."""
    from megatron.core import parallel_state as ps

    layers = _stage_layers(module)
    rules = model_rules(cfg, layers, first_stage=ps.is_pipeline_first_stage(), last_stage=ps.is_pipeline_last_stage())
    return rules, {g: i for i, g in enumerate(layers)}


def _partition_dim(full: tuple[int, ...], local: tuple[int, ...], tp_size: int) -> Optional[int]:
    """The TP-split dimension of a parameter from its full and local shapes (None: replicated, -1: no match).

    Derived from shapes, not from megatron's ``partition_dim`` attribute, which is only set when the
    parameter is randomly initialised.
    """
    if len(full) != len(local):
        return -1
    diff = [d for d in range(len(full)) if full[d] != local[d]]
    if not diff:
        return None
    if len(diff) == 1 and full[diff[0]] == local[diff[0]] * tp_size:
        return diff[0]
    return -1


@torch.no_grad()
def fill_from_hf(model: torch.nn.Module, cfg: ModelConfig, source, tied_source_ok: bool = True) -> int:
    """Copy Hugging Face-named tensors from ``source`` into this rank's shard of ``model`` (either layer spec).

    ``source`` has ``keys()`` and ``get(name)`` (:class:`~nemo_minitron.interop.safetensors_io.HFWeights`).
    Raises :class:`UnmatchedTensorsError` if a model tensor has no source, a source tensor is left
    over, or a shape disagrees. Returns the number of parameters written on this rank.
    """
    from megatron.core import parallel_state as ps

    module = getattr(model, "module", model)
    return fill_state_from_hf(module.state_dict(keep_vars=True), cfg, source, _stage_layers(module),
                              ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage(),
                              ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size(),
                              tied_source_ok)


@torch.no_grad()
def fill_state_from_hf(state: dict, cfg: ModelConfig, source, layers: list[int], first_stage: bool = True,
                       last_stage: bool = True, tp_rank: int = 0, tp_size: int = 1, tied_source_ok: bool = True) -> int:
    """:func:`fill_from_hf` on a stage's state dict (``keep_vars=True``; local or TE names; in place)."""
    rules = model_rules(cfg, layers, first_stage=first_stage, last_stage=last_stage)
    g2l = {g: i for i, g in enumerate(layers)}
    params = canonical_tensors(state)
    wanted = {_local_name(r.mcore, g2l): r for r in rules}
    missing_rules = sorted(set(params) - set(wanted))
    extra_rules = sorted(set(wanted) - set(params))
    if missing_rules or extra_rules:
        raise UnmatchedTensorsError(f"internal mapping mismatch: model tensors without a rule {missing_rules}, "
                                    f"rules without a model tensor {extra_rules}")
    # every source tensor must be used by some rule of the full model (other stages use the rest)
    all_hf = {n for r in model_rules(cfg) for n in r.hf}
    keys = set(source.keys())
    leftover = sorted(k for k in keys - all_hf if not k.endswith(IGNORED_SUFFIXES))
    if cfg.share_embeddings_and_output_weights and "lm_head.weight" in leftover and tied_source_ok:
        leftover.remove("lm_head.weight")  # some tied checkpoints store the shared matrix twice
    absent = sorted({n for r in rules for n in r.hf} - keys)
    if leftover or absent:
        raise UnmatchedTensorsError(
            f"{source.directory}: Hugging Face tensors not matching the architecture: "
            f"missing {absent[:20]}{' ...' if len(absent) > 20 else ''}, "
            f"unexpected {leftover[:20]}{' ...' if len(leftover) > 20 else ''}")
    written = 0
    for local, rule in _tqdm(list(wanted.items()), desc="import tensors", unit="tensor"):
        param = params[local]
        full_shape, shard, dim = read_rank_shard(rule, source, cfg, tuple(param.shape), tp_rank, tp_size)
        if dim == -1 or tuple(shard.shape) != tuple(param.shape):
            raise UnmatchedTensorsError(
                f"shape mismatch for {rule.mcore} (from {list(rule.hf)}): source gives {full_shape} "
                f"→ TP shard {tuple(shard.shape)}, model expects {tuple(param.shape)} at TP={tp_size}")
        param.copy_(shard.to(param.dtype))
        written += param.numel()
        del shard
    return written


def _merged_shape(rule: Rule, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Shape of the full megatron tensor of ``rule`` from its Hugging Face tensors' shapes."""
    if rule.kind in ("qkv", "fc1"):
        return (sum(s[0] for s in shapes), *shapes[0][1:])
    return tuple(shapes[0])


def read_rank_shard(rule: Rule, source, cfg: ModelConfig, local_shape: tuple[int, ...], tp_rank: int,
                    tp_size: int) -> tuple[tuple[int, ...], torch.Tensor, Optional[int]]:
    """The TP rank's shard of ``rule``'s megatron tensor → ``(full shape, shard, split dim)`` (dim -1: no match).

    With a source that reads slices (:meth:`~nemo_minitron.interop.safetensors_io.HFWeights.get_slice`)
    only this rank's rows/columns of each Hugging Face tensor are read: the query groups ``[g0, g0 +
    G/TP)`` of q/k/v, the neurons of gate and up, the vocabulary block of the embedding. Otherwise the
    full tensor is read and sliced.
    """
    if tp_size > 1 and hasattr(source, "get_slice"):
        full_shape = _merged_shape(rule, [tuple(source.shape(n)) for n in rule.hf])
        dim = _partition_dim(full_shape, local_shape, tp_size)
        if dim is not None and dim != -1:
            return full_shape, _read_slices(rule, source, cfg, full_shape, dim, tp_rank, tp_size), dim
    full = hf_to_mcore(rule, [source.get(n) for n in rule.hf], cfg)
    dim = _partition_dim(tuple(full.shape), local_shape, tp_size)
    shard = shard_for_rank(rule, full, dim, tp_rank, tp_size) if dim != -1 else full
    return tuple(full.shape), shard, dim


def _read_slices(rule: Rule, source, cfg: ModelConfig, full_shape: tuple[int, ...], dim: int, rank: int,
                 size: int) -> torch.Tensor:
    if rule.kind == "qkv" and dim == 0:
        groups, d = cfg.query_groups // size, cfg.head_dim
        per = cfg.num_attention_heads // cfg.query_groups
        g0 = rank * groups
        q = source.get_slice(rule.hf[0], 0, g0 * per * d, (g0 + groups) * per * d)
        k = source.get_slice(rule.hf[1], 0, g0 * d, (g0 + groups) * d)
        v = source.get_slice(rule.hf[2], 0, g0 * d, (g0 + groups) * d)
        return merge_qkv(q, k, v, groups * per, groups, d)
    if rule.kind == "fc1" and dim == 0:
        n = full_shape[0] // 2 // size
        return merge_fc1(*(source.get_slice(name, 0, rank * n, (rank + 1) * n) for name in rule.hf))
    n = full_shape[dim] // size
    return source.get_slice(rule.hf[0], dim, rank * n, (rank + 1) * n)


@torch.no_grad()
def iter_hf_tensors(model: torch.nn.Module, cfg: ModelConfig, dtype: Optional[torch.dtype] = None
                    ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, tensor)`` for a TP=1, PP=1 model (either layer spec), layer by layer (views when possible)."""
    from megatron.core import parallel_state as ps

    if ps.get_tensor_model_parallel_world_size() != 1 or ps.get_pipeline_model_parallel_world_size() != 1:
        raise RuntimeError("export reads a TP=1, PP=1 model; build it with build_model_for_conversion(cfg, 1, 1)")
    module = getattr(model, "module", model)
    yield from iter_hf_from_state(module.state_dict(keep_vars=True), cfg, dtype)


@torch.no_grad()
def iter_hf_tensors_sharded(model: torch.nn.Module, cfg: ModelConfig, dtype: Optional[torch.dtype] = None
                            ) -> Iterator[tuple[str, torch.Tensor]]:
    """:func:`iter_hf_tensors` for a model at any TP × PP layout. Collective: every rank must exhaust it.

    Tensor by tensor, in layer order, the owning pipeline stage all-gathers its TP shards and sends the
    full tensor to its replica's first stage; only global rank 0 yields. Every process holds its own
    shard plus at most one full tensor (a layer's largest), never the full model.
    """
    from megatron.core import parallel_state as ps

    from nemo_minitron.prune.sharded import gather_full

    module = getattr(model, "module", model)
    params = _named_tensors(module)
    tp = SimpleNamespace(tp_size=ps.get_tensor_model_parallel_world_size(),
                         tp_group=ps.get_tensor_model_parallel_group())
    tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    pp_size = ps.get_pipeline_model_parallel_world_size()
    local_layers = _stage_layers(module)
    g2l = {g: i for i, g in enumerate(local_layers)}
    owner = {g: 0 for g in local_layers}
    pp_ranks = [dist.get_rank()]
    if pp_size > 1:
        pp_group = ps.get_pipeline_model_parallel_group()
        stages: list = [None] * pp_size
        dist.all_gather_object(stages, local_layers, group=pp_group)
        owner = {g: s for s, layers in enumerate(stages) for g in layers}
        pp_ranks = dist.get_process_group_ranks(pp_group)
    head = pp_rank == 0 and tp_rank == 0  # receives its replica's tensors; global rank 0 also writes
    from nemo_minitron.atomic import is_rank0

    writer = is_rank0()
    dtype_of = next(iter(params.values())).dtype
    for rule in _tqdm(model_rules(cfg), desc="export tensors", unit="tensor"):
        split = names.split_layer_key(rule.mcore)
        stage = owner[split[0]] if split else (0 if rule.mcore == names.EMBEDDING else pp_size - 1)
        full = None
        if pp_rank == stage:
            full = params[_local_name(rule.mcore, g2l)].detach()
            dim = names.tp_split_dim(rule.mcore)
            if dim is not None and tp.tp_size > 1:
                full = gather_full(full, dim, rule.kind == "fc1" and cfg.gated_linear_unit, tp)
            if stage != 0 and tp_rank == 0:
                shape = torch.full((4,), -1, dtype=torch.int64)
                shape[: full.dim()] = torch.tensor(full.shape)
                dist.send(shape, dst=pp_ranks[0])
                dist.send(full.contiguous(), dst=pp_ranks[0])
        elif head:
            shape = torch.empty(4, dtype=torch.int64)
            dist.recv(shape, src=pp_ranks[stage])
            full = torch.empty([int(s) for s in shape if s >= 0], dtype=dtype_of)
            dist.recv(full, src=pp_ranks[stage])
        if writer:
            for name, t in zip(rule.hf, mcore_to_hf(rule, full, cfg)):
                yield name, t if dtype is None else t.to(dtype)
        del full


@torch.no_grad()
def iter_hf_from_state(state: dict, cfg: ModelConfig, dtype: Optional[torch.dtype] = None
                       ) -> Iterator[tuple[str, torch.Tensor]]:
    """:func:`iter_hf_tensors` on a full (TP=1, PP=1) state dict with local or TE names."""
    params = canonical_tensors(state)
    rules = model_rules(cfg)
    unmatched = sorted(set(params) - {r.mcore for r in rules})
    if unmatched:
        raise UnmatchedTensorsError(f"model tensors with no Hugging Face name: {unmatched}")
    for rule in _tqdm(rules, desc="export tensors", unit="tensor"):
        for name, t in zip(rule.hf, mcore_to_hf(rule, params[rule.mcore].detach(), cfg)):
            yield name, t if dtype is None else t.to(dtype)
