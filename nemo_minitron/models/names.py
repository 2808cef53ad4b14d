"""The one table of megatron-core GPT names (local and Transformer Engine specs) and the norm formula.

A GPT transformer layer has the same tensors under both layer specs; only the two pre-norms are
spelled differently. The local spec has separate norm modules (``input_layernorm``,
``pre_mlp_layernorm``); Transformer Engine fuses each norm into the following linear layer
(``TELayerNormColumnParallelLinear``), whose parameters are ``layer_norm_weight`` /
``layer_norm_bias`` next to ``weight`` / ``bias``. megatron-core's local spec already *saves* its norms
under the fused names (its ``sharded_state_dict_keys_map``), so dist checkpoints of both specs agree;
in-memory state dicts and module trees do not.

Besides weights, both specs carry ``_extra_state`` entries (``ShardedObject`` in a dist checkpoint):
the local linear layers store an empty one for TE compatibility; TE modules store FP8 metadata and
TE's core attention adds its own. They never hold weights, so loaders treat them as optional.

The checkpoint loader, the HF/NeMo mapping and the pruning hooks and surgery read names from here;
:func:`norm_site` and :func:`fused_norm_output` give the post-norm hidden states under either spec.
Canonical names are the local-spec ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

LOCAL = "local"
TRANSFORMER_ENGINE = "transformer_engine"
SPECS = (LOCAL, TRANSFORMER_ENGINE)
EXTRA_STATE = "_extra_state"

#: ``model.activation`` names -> the function megatron-core applies (``module.function``); builder, config
#: validation, the NeMo 2 context and the HF config translation read this table.
ACTIVATIONS = {"silu": "torch.nn.functional.silu", "gelu": "torch.nn.functional.gelu",
               "relu": "torch.nn.functional.relu", "squared_relu": "megatron.core.activations.squared_relu"}


def activation_function(name: str):
    """The callable behind ``model.activation=name`` (:data:`ACTIVATIONS`)."""
    import importlib

    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation={name!r} must be one of {list(ACTIVATIONS)}")
    module, _, fn = ACTIVATIONS[name].rpartition(".")
    return getattr(importlib.import_module(module), fn)
LAYER_PREFIX = "decoder.layers."


@dataclass(frozen=True)
class LayerTensor:
    """One tensor of a GPT transformer layer, named relative to ``decoder.layers.<i>.``."""

    role: str
    """Spec-independent role, e.g. ``attn_norm.weight``."""

    local: str
    """Name under the local spec (canonical)."""

    te: str
    """Name under the Transformer Engine spec."""


def _same(role: str, name: str) -> LayerTensor:
    return LayerTensor(role, name, name)


#: Every tensor a GPT layer can have (which exist depends on the architecture: see :func:`layer_tensors`).
LAYER_TENSORS: tuple[LayerTensor, ...] = (
    LayerTensor("attn_norm.weight", "input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"),
    LayerTensor("attn_norm.bias", "input_layernorm.bias", "self_attention.linear_qkv.layer_norm_bias"),
    _same("qkv.weight", "self_attention.linear_qkv.weight"),
    _same("qkv.bias", "self_attention.linear_qkv.bias"),
    _same("q_norm.weight", "self_attention.q_layernorm.weight"),
    _same("q_norm.bias", "self_attention.q_layernorm.bias"),
    _same("k_norm.weight", "self_attention.k_layernorm.weight"),
    _same("k_norm.bias", "self_attention.k_layernorm.bias"),
    _same("proj.weight", "self_attention.linear_proj.weight"),
    _same("proj.bias", "self_attention.linear_proj.bias"),
    LayerTensor("mlp_norm.weight", "pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"),
    LayerTensor("mlp_norm.bias", "pre_mlp_layernorm.bias", "mlp.linear_fc1.layer_norm_bias"),
    _same("fc1.weight", "mlp.linear_fc1.weight"),
    _same("fc1.bias", "mlp.linear_fc1.bias"),
    _same("fc2.weight", "mlp.linear_fc2.weight"),
    _same("fc2.bias", "mlp.linear_fc2.bias"),
)
BY_ROLE = {t.role: t for t in LAYER_TENSORS}

#: Tensors outside the layers (same name under both specs).
EMBEDDING = "embedding.word_embeddings.weight"
POSITION_EMBEDDING = "embedding.position_embeddings.weight"
FINAL_NORM_WEIGHT = "decoder.final_layernorm.weight"
FINAL_NORM_BIAS = "decoder.final_layernorm.bias"
OUTPUT_LAYER = "output_layer.weight"
OUTPUT_BIAS = "output_layer.bias"
#: Recomputed buffers that carry no weights.
BUFFERS = ("rotary_pos_emb.inv_freq",)

#: Layer modules whose in-memory state dict has an ``_extra_state`` entry, per spec. Under TE the unfused
#: norms (``TENorm``: qk-norms here, ``decoder.final_layernorm`` outside the layers) have one too, and
#: they reach the dist checkpoint as ``ShardedObject``s; TE's core attention keeps its own out of the
#: sharded state dict in megatron-core 0.16.
EXTRA_STATE_MODULES = {
    LOCAL: ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2"),
    TRANSFORMER_ENGINE: ("self_attention.linear_qkv", "self_attention.core_attention", "self_attention.linear_proj",
                         "self_attention.q_layernorm", "self_attention.k_layernorm", "mlp.linear_fc1",
                         "mlp.linear_fc2"),
}

#: The two hidden-state norm sites of a layer: (local norm module, TE linear the norm is fused into).
NORM_SITES = (("input_layernorm", "self_attention.linear_qkv"), ("pre_mlp_layernorm", "mlp.linear_fc1"))

_LOCAL_TO_TE = {t.local: t.te for t in LAYER_TENSORS if t.local != t.te}
_TE_TO_LOCAL = {v: k for k, v in _LOCAL_TO_TE.items()}


def layer_tensors(normalization: str = "RMSNorm", qk_layernorm: bool = False, add_qkv_bias: bool = False,
                  add_bias_linear: bool = False) -> list[LayerTensor]:
    """The tensors a GPT layer of this architecture has (in :data:`LAYER_TENSORS` order)."""
    layer_norm = normalization == "LayerNorm"
    present = {
        "attn_norm.bias": layer_norm, "mlp_norm.bias": layer_norm,
        "qkv.bias": add_qkv_bias or add_bias_linear,
        "q_norm.weight": qk_layernorm, "k_norm.weight": qk_layernorm,
        "q_norm.bias": qk_layernorm and layer_norm, "k_norm.bias": qk_layernorm and layer_norm,
        "proj.bias": add_bias_linear, "fc1.bias": add_bias_linear, "fc2.bias": add_bias_linear,
    }
    return [t for t in LAYER_TENSORS if present.get(t.role, True)]


def layer_tensor_names(spec: str = LOCAL, **arch) -> list[str]:
    """Layer-relative tensor names under ``spec`` for the architecture flags of :func:`layer_tensors`."""
    _check_spec(spec)
    return [t.te if spec == TRANSFORMER_ENGINE else t.local for t in layer_tensors(**arch)]


def _check_spec(spec: str) -> None:
    if spec not in SPECS:
        raise ValueError(f"layer spec {spec!r} must be one of {list(SPECS)}")


def _swap(key: str, table: dict[str, str]) -> str:
    for src, dst in table.items():
        if key == src or key.endswith("." + src):
            return key[: len(key) - len(src)] + dst
    return key


def to_local(key: str) -> str:
    """Canonical (local-spec) spelling of any state-dict key (``...linear_qkv.layer_norm_weight`` → ``...input_layernorm.weight``)."""
    return _swap(key, _TE_TO_LOCAL)


def to_te(key: str) -> str:
    """Transformer Engine spelling of any state-dict key (``...input_layernorm.weight`` → ``...linear_qkv.layer_norm_weight``)."""
    return _swap(key, _LOCAL_TO_TE)


def to_spec(key: str, spec: str) -> str:
    """The spelling of ``key`` under ``spec`` (``local`` or ``transformer_engine``)."""
    _check_spec(spec)
    return to_te(key) if spec == TRANSFORMER_ENGINE else to_local(key)


def alternative(key: str) -> str:
    """The other spelling of a fused-norm key (TE ⇄ local); ``key`` itself for every other tensor."""
    te = to_te(key)
    return te if te != key else to_local(key)


def is_extra_state(key: str) -> bool:
    """True for TE/FP8 bookkeeping entries (``..._extra_state``), which never hold weights."""
    return key.endswith(EXTRA_STATE)


def is_weight_key(key: str) -> bool:
    """True for keys that carry weights (not ``_extra_state``, not a recomputed buffer)."""
    return not is_extra_state(key) and not key.endswith(BUFFERS)


def split_layer_key(key: str) -> Optional[tuple[int, str]]:
    """``decoder.layers.3.mlp.linear_fc2.weight`` → ``(3, "mlp.linear_fc2.weight")``; None outside the layers."""
    if not key.startswith(LAYER_PREFIX):
        return None
    idx, _, rest = key[len(LAYER_PREFIX):].partition(".")
    return (int(idx), rest) if idx.isdigit() and rest else None


def role_of(layer_name: str) -> Optional[LayerTensor]:
    """The table entry of a layer-relative name under either spec (None when unknown)."""
    local = to_local(layer_name)
    return next((t for t in LAYER_TENSORS if t.local == local), None)


def spellings(*roles: str) -> tuple[str, ...]:
    """Layer-relative names of ``roles`` under both specs (local first), e.g. for membership tests."""
    return tuple(dict.fromkeys(n for r in roles for n in (BY_ROLE[r].local, BY_ROLE[r].te)))


# --------------------------------------------------------------------------- modules and the norm formula


def norm_site(layer: torch.nn.Module, site: int) -> tuple[torch.nn.Module, bool]:
    """Module holding hidden-state norm ``site`` (0: pre-attention, 1: pre-MLP) of a ``TransformerLayer``.

    Returns ``(module, fused)``: the norm module itself (local spec), or the TE linear the norm is
    fused into (``fused=True``; the norm's output is then :func:`fused_norm_output` of its input).
    """
    from megatron.core.transformer.identity_op import IdentityOp

    norm_name, fused_name = NORM_SITES[site]
    norm = layer.get_submodule(norm_name)
    if isinstance(norm, IdentityOp):
        fused = layer.get_submodule(fused_name)
        if hasattr(fused, "layer_norm_weight"):
            return fused, True
    return norm, False


def apply_norm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], normalization: str, eps: float,
               zero_centered_gamma: bool = False) -> torch.Tensor:
    """RMSNorm or LayerNorm of ``x`` over its last dimension (fp32), as megatron-core and TE compute it.

    ``zero_centered_gamma`` stores the scale as ``gamma - 1`` (TE/apex option): the applied scale is ``1 + weight``.
    """
    x = x.float()
    scale = weight.float() + 1.0 if zero_centered_gamma else weight.float()
    if normalization == "RMSNorm":
        y = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * scale
    elif normalization == "LayerNorm":
        y = torch.nn.functional.layer_norm(x, x.shape[-1:], None, None, eps) * scale
    else:
        raise ValueError(f"normalization={normalization!r} must be RMSNorm or LayerNorm")
    return y + bias.float() if bias is not None else y


def fused_norm_output(module: torch.nn.Module, x: torch.Tensor, normalization: str, eps: float,
                      zero_centered_gamma: bool = False) -> torch.Tensor:
    """Output of the norm fused into a TE linear ``module``, recomputed from the linear's input ``x``."""
    return apply_norm(x, module.layer_norm_weight, getattr(module, "layer_norm_bias", None), normalization, eps,
                      zero_centered_gamma)


def tp_split_dim(key: str) -> Optional[int]:
    """The dimension megatron-core splits tensor ``key`` along under tensor parallelism (None: replicated).

    Column-parallel tensors (QKV, fc1, vocabulary rows of the embedding and output layer) split along
    0, row-parallel weights (``linear_proj``, ``linear_fc2``) along 1; norms and row-parallel biases
    are replicated.
    """
    if key in (EMBEDDING, OUTPUT_LAYER):
        return 0
    split = split_layer_key(key)
    if split is None:
        return None
    if split[1] in spellings("proj.weight", "fc2.weight"):
        return 1
    if split[1] in spellings("qkv.weight", "qkv.bias", "fc1.weight", "fc1.bias"):
        return 0
    return None
