"""Transformer-Engine (fused) and local (unfused) norm names, and a loader that accepts either, strictly.

Transformer Engine fuses the pre-attention and pre-MLP norms into the following linear layer, so
its checkpoints name them ``self_attention.linear_qkv.layer_norm_weight`` and
``mlp.linear_fc1.layer_norm_weight``; the local spec has separate ``input_layernorm.weight`` and
``pre_mlp_layernorm.weight`` modules. The names themselves live in :mod:`nemo_minitron.models.names`;
this module keeps the conversion-facing helpers. :func:`load_dist_weights` (the shared
:func:`nemo_minitron.checkpoint.load_weights`) maps each requested key onto whichever name the
checkpoint has, and fails with both lists of names when any model tensor has no counterpart or
any checkpoint tensor is left unused: a norm is never silently left at its initial 1.0.
"""

from __future__ import annotations

from typing import Iterable

import torch

from nemo_minitron.checkpoint import UnmatchedKeysError, _mismatch, stored_tensor_keys
from nemo_minitron.checkpoint import load_weights as _load_weights
from nemo_minitron.models import names
from nemo_minitron.paths import PathLike

#: fused (TE) suffix -> unfused (local) suffix, inside ``decoder.layers.[i.]``.
FUSED_TO_LOCAL = {t.te: t.local for t in names.LAYER_TENSORS if t.te != t.local}
LOCAL_TO_FUSED = {v: k for k, v in FUSED_TO_LOCAL.items()}
EXTRA_STATE = names.EXTRA_STATE
__all__ = ["FUSED_TO_LOCAL", "LOCAL_TO_FUSED", "EXTRA_STATE", "UnmatchedKeysError", "to_local_name",
           "to_fused_name", "alternative_name", "match_state_dict", "checkpoint_tensor_keys", "load_dist_weights"]


def to_local_name(key: str) -> str:
    """``...linear_qkv.layer_norm_weight`` → ``...input_layernorm.weight`` (other keys unchanged)."""
    return names.to_local(key)


def to_fused_name(key: str) -> str:
    """``...input_layernorm.weight`` → ``...linear_qkv.layer_norm_weight`` (other keys unchanged)."""
    return names.to_te(key)


def alternative_name(key: str) -> str:
    """The other spelling of a norm key (fused ⇄ local); the key itself for every other tensor."""
    return names.alternative(key)


def match_state_dict(state: dict[str, torch.Tensor], target_keys: Iterable[str], where: str = "state dict"
                     ) -> dict[str, torch.Tensor]:
    """Rename a plain state dict (fused or unfused norm names) onto ``target_keys``; strict both ways.

    ``_extra_state`` entries are dropped on both sides (TE bookkeeping, not weights).
    """
    targets = {k for k in target_keys if not names.is_extra_state(k)}
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state.items():
        if names.is_extra_state(key):
            continue
        name = key if key in targets else alternative_name(key)
        if name not in targets or name in out:
            unexpected.append(key)
            continue
        out[name] = value
    missing = targets - set(out)
    if missing or unexpected:
        raise _mismatch(where, missing, unexpected)
    return out


def checkpoint_tensor_keys(weights_dir: PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor keys (and global shapes) stored in a megatron dist checkpoint directory."""
    return stored_tensor_keys(weights_dir)


def load_dist_weights(model: torch.nn.Module, weights_dir: PathLike, prefix: str = "") -> None:
    """Load a megatron dist checkpoint with fused **or** unfused norm names into ``model`` (any spec, any TP/PP).

    ``prefix`` is the key prefix used in the checkpoint (``"module."`` for NeMo 2). Collective.
    Raises :class:`UnmatchedKeysError` before reading any data when names do not match one to one.
    """
    _load_weights(model, weights_dir, prefix=prefix)
