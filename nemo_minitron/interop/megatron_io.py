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
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from nemo_minitron.config.model import ModelConfig
from nemo_minitron.interop.mapping import Rule, hf_to_mcore, mcore_to_hf, model_rules, shard_for_rank
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

    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    return tqdm(iterable, disable=not rank0 or os.environ.get("NEMO_MINITRON_NO_PROGRESS") == "1", **kwargs)


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
        full = hf_to_mcore(rule, [source.get(n) for n in rule.hf], cfg)
        dim = _partition_dim(tuple(full.shape), tuple(param.shape), tp_size)
        shard = shard_for_rank(rule, full, dim, tp_rank, tp_size) if dim != -1 else full
        if dim == -1 or tuple(shard.shape) != tuple(param.shape):
            raise UnmatchedTensorsError(
                f"shape mismatch for {rule.mcore} (from {list(rule.hf)}): source gives {tuple(full.shape)} "
                f"→ TP shard {tuple(shard.shape)}, model expects {tuple(param.shape)} at TP={tp_size}")
        param.copy_(shard.to(param.dtype))
        written += param.numel()
        del full, shard
    return written


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
