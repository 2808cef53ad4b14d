"""Width and depth surgery on full (TP=1 shaped) megatron-core GPTModel tensors, one tensor at a time.

The plan lists, per axis, the original indices to keep *in the order they will appear* in the
pruned model: ascending order prunes, an importance order with every index permutes (an
output-preserving reordering, used to test the bookkeeping). Handled layouts:

* ``linear_qkv`` rows are interleaved per query group: ``[q_0 … q_{hpg−1}, k, v]`` × ``n_g`` (each ``d`` rows);
* ``linear_proj`` input columns are group-major head contexts ``[n_h · d]``;
* gated ``linear_fc1`` holds ``[gate; up]``: both halves keep the same neurons;
* every norm (local spec ``input_layernorm``/``pre_mlp_layernorm``, TE fused ``layer_norm_weight``),
  the embedding, learned positions, the final norm and an untied ``output_layer`` lose the same hidden
  channels; a tied output layer is the embedding itself;
* biases follow their rows; ``q_layernorm``/``k_layernorm`` act on the head dim and are kept.

Unknown tensor keys raise instead of being copied silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from nemo_minitron.config.model import ModelConfig
from nemo_minitron.models import names

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
#: 1-D layer tensors indexed by hidden channel, and per-head-dim tensors kept as they are (both layer specs).
_HIDDEN_VECTORS = names.spellings("attn_norm.weight", "attn_norm.bias", "mlp_norm.weight", "mlp_norm.bias",
                                  "proj.bias", "fc2.bias")
_KEEP_AS_IS = names.spellings("q_norm.weight", "q_norm.bias", "k_norm.weight", "k_norm.bias")


@dataclass
class PrunePlan:
    """Indices to keep per axis (None = axis untouched). Layer keys are 0-based original layer indices."""

    hidden: Optional[list[int]] = None
    """Kept embedding channels."""
    ffn: dict[int, list[int]] = field(default_factory=dict)
    """Kept MLP neurons per layer."""
    groups: dict[int, list[int]] = field(default_factory=dict)
    """Kept query groups per layer."""
    heads: dict[int, list[int]] = field(default_factory=dict)
    """Kept query heads per layer (global, group-major head indices), listed group by group."""
    keep_layers: Optional[list[int]] = None
    """Kept layers (0-based, ascending)."""



def _qkv_rows(groups: list[int], heads: list[int], hpg: int, d: int) -> list[int]:
    rows: list[int] = []
    for g in groups:
        base = g * (hpg + 2) * d
        for h in (h for h in heads if h // hpg == g):
            j = h % hpg
            rows.extend(range(base + j * d, base + (j + 1) * d))
        rows.extend(range(base + hpg * d, base + (hpg + 2) * d))  # k and v of the group
    return rows


def _proj_cols(groups: list[int], heads: list[int], hpg: int, d: int) -> list[int]:
    cols: list[int] = []
    for g in groups:
        for h in (h for h in heads if h // hpg == g):
            cols.extend(range(h * d, (h + 1) * d))
    return cols


def _take(t: torch.Tensor, dim: int, idx: Optional[list[int]]) -> torch.Tensor:
    if idx is None:
        return t
    return t.index_select(dim, torch.as_tensor(idx, dtype=torch.long, device=t.device))


def pruned_config(cfg: ModelConfig, plan: PrunePlan) -> ModelConfig:
    """The architecture that ``plan`` produces from ``cfg`` (``kv_channels`` always written explicitly)."""
    def width(per_layer: dict[int, list[int]], default: int) -> int:
        sizes = {len(v) for v in per_layer.values()}
        if len(sizes) > 1:
            raise ValueError(f"every layer must keep the same number of units, got {sorted(sizes)}")
        return sizes.pop() if sizes else default

    ffn = width(plan.ffn, cfg.ffn_hidden_size)
    groups = width(plan.groups, cfg.query_groups)
    heads = width(plan.heads, cfg.num_attention_heads)
    changed_attn = bool(plan.groups or plan.heads) or cfg.num_query_groups is not None
    return cfg.replace(
        num_layers=len(plan.keep_layers) if plan.keep_layers is not None else cfg.num_layers,
        hidden_size=len(plan.hidden) if plan.hidden is not None else cfg.hidden_size,
        ffn_hidden_size=ffn,
        num_attention_heads=heads,
        num_query_groups=groups if changed_attn else None,
        kv_channels=cfg.head_dim,
    )


def prune_global_tensor(key: str, value: torch.Tensor, plan: PrunePlan) -> torch.Tensor:
    """Slice a tensor outside the decoder layers (embedding, output layer, final norm).

    The hidden axis is never sharded over TP, so this works on a full tensor and on a TP shard alike.
    """
    hid = plan.hidden
    if key in ("embedding.word_embeddings.weight", "embedding.position_embeddings.weight", "output_layer.weight"):
        return _take(value, 1, hid)
    if key.startswith("decoder.final_layernorm."):
        return _take(value, 0, hid)
    if key == "output_layer.bias" or key.endswith("rotary_pos_emb.inv_freq"):
        return value
    raise KeyError(f"pruning does not know how to slice state-dict key {key!r}")


def prune_layer_tensor(name: str, value: torch.Tensor, layer: int, cfg: ModelConfig, plan: PrunePlan) -> torch.Tensor:
    """Slice the full tensor ``name`` (key inside a decoder layer) of 0-based original layer ``layer``."""
    hpg, d = cfg.num_attention_heads // cfg.query_groups, cfg.head_dim
    hid = plan.hidden
    groups = plan.groups.get(layer, list(range(cfg.query_groups))) if plan.groups else list(range(cfg.query_groups))
    heads = plan.heads.get(layer) if plan.heads else None
    if heads is None:
        heads = [g * hpg + j for g in groups for j in range(hpg)]
    attn_changed = bool(plan.groups or plan.heads)
    ffn = plan.ffn.get(layer) if plan.ffn else None
    if name in _HIDDEN_VECTORS:
        v = _take(value, 0, hid)
    elif name in _KEEP_AS_IS:
        v = value
    elif name == "self_attention.linear_qkv.weight":
        v = _take(_take(value, 0, _qkv_rows(groups, heads, hpg, d) if attn_changed else None), 1, hid)
    elif name == "self_attention.linear_qkv.bias":
        v = _take(value, 0, _qkv_rows(groups, heads, hpg, d) if attn_changed else None)
    elif name == "self_attention.linear_proj.weight":
        v = _take(_take(value, 1, _proj_cols(groups, heads, hpg, d) if attn_changed else None), 0, hid)
    elif name in ("mlp.linear_fc1.weight", "mlp.linear_fc1.bias"):
        rows = None
        if ffn is not None:
            f = cfg.ffn_hidden_size
            rows = list(ffn) + [f + i for i in ffn] if cfg.gated_linear_unit else list(ffn)
        v = _take(value, 0, rows)
        if name.endswith("weight"):
            v = _take(v, 1, hid)
    elif name == "mlp.linear_fc2.weight":
        v = _take(_take(value, 1, ffn), 0, hid)
    else:
        raise KeyError(f"pruning does not know how to slice state-dict key decoder.layers.{layer}.{name}")
    return v.clone()


def prune_state_dict(sd: dict[str, Any], cfg: ModelConfig, plan: PrunePlan) -> tuple[dict[str, Any], ModelConfig]:
    """Apply ``plan`` to a full state dict of a GPTModel built from ``cfg`` → (new state dict, new config)."""
    keep_layers = plan.keep_layers if plan.keep_layers is not None else list(range(cfg.num_layers))
    new_index = {old: new for new, old in enumerate(keep_layers)}
    out: dict[str, Any] = {}
    for key, value in sd.items():
        m = _LAYER.match(key)
        if m and int(m.group(1)) not in new_index:
            continue
        new_key = f"decoder.layers.{new_index[int(m.group(1))]}.{m.group(2)}" if m else key
        if not isinstance(value, torch.Tensor) or key.endswith("_extra_state"):
            out[new_key] = value
        elif m:
            out[new_key] = prune_layer_tensor(m.group(2), value, int(m.group(1)), cfg, plan)
        else:
            out[new_key] = prune_global_tensor(key, value, plan)
    return out, pruned_config(cfg, plan)
