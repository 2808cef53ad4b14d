"""Pure name and layout mapping between Hugging Face Llama-family weights and megatron-core GPT weights.

Nothing here touches megatron or files; every function takes and returns tensors, so the layout
rules are testable on their own:

* megatron fuses Q, K and V into one ``linear_qkv`` matrix laid out **per query group**:
  ``[q_0 .. q_{h/g-1}, k, v]`` for group 0, then group 1, ... (each block ``head_dim`` rows).
  Hugging Face keeps ``q_proj`` (heads × head_dim rows), ``k_proj`` and ``v_proj`` (groups × head_dim).
  Query head ``i`` belongs to KV group ``i // (heads / groups)`` in both.
* gated MLPs fuse ``gate_proj`` and ``up_proj`` into ``linear_fc1 = [gate; up]``.
* tensor parallelism splits a full tensor along its ``partition_dim``; the gated ``linear_fc1`` is
  split per half, so TP rank ``r`` holds ``[gate_r; up_r]``.

The shapes come from the architecture (heads, groups, head_dim), never from ``hidden / heads``,
so pruned models with an explicit ``kv_channels`` map exactly. Megatron names come from the name
table (:mod:`nemo_minitron.models.names`) in their canonical local-spec spelling; a Transformer
Engine model's fused norm names are translated there, so the rules serve both layer specs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from nemo_minitron.config.model import ModelConfig
from nemo_minitron.models import names

# --------------------------------------------------------------------------- fused tensors


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, groups: int, head_dim: int) -> torch.Tensor:
    """Megatron ``linear_qkv`` (weight ``[rows, in]`` or bias ``[rows]``) from Hugging Face q/k/v."""
    if heads % groups:
        raise ValueError(f"num_attention_heads={heads} is not a multiple of num_query_groups={groups}")
    per = heads // groups
    tail = q.shape[1:]
    expected = {"q": heads * head_dim, "k": groups * head_dim, "v": groups * head_dim}
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.shape[0] != expected[name]:
            raise ValueError(f"{name}_proj has {t.shape[0]} rows; expected {expected[name]} "
                             f"(heads={heads}, groups={groups}, head_dim={head_dim})")
    qg = q.reshape(groups, per * head_dim, *tail)
    kg = k.reshape(groups, head_dim, *tail)
    vg = v.reshape(groups, head_dim, *tail)
    return torch.cat([qg, kg, vg], dim=1).reshape(groups * (per + 2) * head_dim, *tail)


def split_qkv(qkv: torch.Tensor, heads: int, groups: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`merge_qkv`: ``(q, k, v)`` in Hugging Face layout."""
    per = heads // groups
    rows = groups * (per + 2) * head_dim
    if qkv.shape[0] != rows:
        raise ValueError(f"linear_qkv has {qkv.shape[0]} rows; expected {rows} "
                         f"(heads={heads}, groups={groups}, head_dim={head_dim})")
    tail = qkv.shape[1:]
    g = qkv.reshape(groups, (per + 2) * head_dim, *tail)
    q = g[:, : per * head_dim].reshape(heads * head_dim, *tail)
    k = g[:, per * head_dim: (per + 1) * head_dim].reshape(groups * head_dim, *tail)
    v = g[:, (per + 1) * head_dim:].reshape(groups * head_dim, *tail)
    return q, k, v


def merge_fc1(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Megatron gated ``linear_fc1`` = ``[gate; up]``."""
    if gate.shape != up.shape:
        raise ValueError(f"gate_proj {tuple(gate.shape)} and up_proj {tuple(up.shape)} differ in shape")
    return torch.cat([gate, up], dim=0)


def split_fc1(fc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`merge_fc1`: ``(gate, up)``."""
    if fc1.shape[0] % 2:
        raise ValueError(f"gated linear_fc1 has an odd number of rows ({fc1.shape[0]})")
    gate, up = fc1.chunk(2, dim=0)
    return gate, up


# --------------------------------------------------------------------------- tensor parallelism


def tp_slice(full: torch.Tensor, dim: Optional[int], rank: int, size: int) -> torch.Tensor:
    """The TP rank's contiguous shard of ``full`` along ``dim`` (``dim=None``: replicated, returned as is)."""
    if dim is None or size == 1:
        return full
    if full.shape[dim] % size:
        raise ValueError(f"dimension {dim} of size {full.shape[dim]} is not divisible by TP size {size}")
    return full.chunk(size, dim=dim)[rank]


def glu_tp_slice(full: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """The TP rank's shard of a gated ``linear_fc1`` (``[gate_r; up_r]``)."""
    if size == 1:
        return full
    gate, up = split_fc1(full)
    return torch.cat([tp_slice(gate, 0, rank, size), tp_slice(up, 0, rank, size)], dim=0)


# --------------------------------------------------------------------------- name rules


@dataclass(frozen=True)
class Rule:
    """How one megatron tensor is built from (and split back into) Hugging Face tensors."""

    mcore: str
    """Megatron state-dict name in its canonical (local-spec, :mod:`nemo_minitron.models.names`) spelling,
    TP=1 naming, with the global layer index; :func:`spec_name` gives the Transformer Engine spelling."""

    hf: tuple[str, ...]
    """Hugging Face names it is made of (one for a plain copy)."""

    kind: str = "copy"
    """copy, qkv (merge q/k/v per group) or fc1 (gated [gate; up])."""


def spec_name(rule: Rule, spec: str) -> str:
    """The megatron name of ``rule`` under layer spec ``spec`` (``local`` or ``transformer_engine``)."""
    return names.to_spec(rule.mcore, spec)


#: Hugging Face names (inside ``model.layers.<i>.``) per layer-tensor role of :mod:`nemo_minitron.models.names`.
_HF_LAYER = {
    "attn_norm.weight": ("input_layernorm.weight",),
    "attn_norm.bias": ("input_layernorm.bias",),
    "qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "qkv.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "q_norm.weight": ("self_attn.q_norm.weight",),
    "q_norm.bias": ("self_attn.q_norm.bias",),
    "k_norm.weight": ("self_attn.k_norm.weight",),
    "k_norm.bias": ("self_attn.k_norm.bias",),
    "proj.weight": ("self_attn.o_proj.weight",),
    "proj.bias": ("self_attn.o_proj.bias",),
    "mlp_norm.weight": ("post_attention_layernorm.weight",),
    "mlp_norm.bias": ("post_attention_layernorm.bias",),
    "fc1.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "fc1.bias": ("mlp.gate_proj.bias", "mlp.up_proj.bias"),
    "fc2.weight": ("mlp.down_proj.weight",),
    "fc2.bias": ("mlp.down_proj.bias",),
}


def layer_rules(cfg: ModelConfig, layer: int) -> list[Rule]:
    """Rules for transformer block ``layer`` (global, 0-based) of the architecture ``cfg``."""
    m, h = f"{names.LAYER_PREFIX}{layer}.", f"model.layers.{layer}."
    rules = []
    for t in names.layer_tensors(cfg.normalization, cfg.qk_layernorm, cfg.add_qkv_bias, cfg.add_bias_linear):
        hf, kind = _HF_LAYER[t.role], "copy"
        if t.role.startswith("qkv."):
            kind = "qkv"
        elif t.role.startswith("fc1."):
            kind, hf = ("fc1", hf) if cfg.gated_linear_unit else ("copy", hf[1:])
        rules.append(Rule(m + t.local, tuple(h + n for n in hf), kind))
    return rules


def model_rules(cfg: ModelConfig, layers: Optional[list[int]] = None, first_stage: bool = True,
                last_stage: bool = True) -> list[Rule]:
    """All rules for the given global ``layers`` (default: all) plus embedding/final norm/output."""
    rules: list[Rule] = []
    if first_stage:
        rules.append(Rule(names.EMBEDDING, ("model.embed_tokens.weight",)))
    for i in range(cfg.num_layers) if layers is None else layers:
        rules.extend(layer_rules(cfg, i))
    if last_stage:
        rules.append(Rule(names.FINAL_NORM_WEIGHT, ("model.norm.weight",)))
        if cfg.normalization == "LayerNorm":
            rules.append(Rule(names.FINAL_NORM_BIAS, ("model.norm.bias",)))
        if not cfg.share_embeddings_and_output_weights:
            rules.append(Rule(names.OUTPUT_LAYER, ("lm_head.weight",)))
        elif not first_stage:  # PP>1 with tied embeddings: the last stage keeps its own copy of the embedding
            rules.append(Rule(names.OUTPUT_LAYER, ("model.embed_tokens.weight",)))
    return rules


def hf_to_mcore(rule: Rule, tensors: list[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    """The full (TP=1) megatron tensor for ``rule`` from its Hugging Face ``tensors``."""
    if rule.kind == "qkv":
        return merge_qkv(*tensors, cfg.num_attention_heads, cfg.query_groups, cfg.head_dim)
    if rule.kind == "fc1":
        return merge_fc1(*tensors)
    (t,) = tensors
    return t


def mcore_to_hf(rule: Rule, full: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
    """The Hugging Face tensors (in ``rule.hf`` order) for a full megatron tensor."""
    if rule.kind == "qkv":
        return list(split_qkv(full, cfg.num_attention_heads, cfg.query_groups, cfg.head_dim))
    if rule.kind == "fc1":
        return list(split_fc1(full))
    return [full]


def shard_for_rank(rule: Rule, full: torch.Tensor, partition_dim: Optional[int], rank: int, size: int) -> torch.Tensor:
    """The TP rank's shard of the full megatron tensor of ``rule`` (gated fc1 split per half)."""
    if rule.kind == "fc1" and partition_dim == 0:
        return glu_tp_slice(full, rank, size)
    return tp_slice(full, partition_dim, rank, size)
