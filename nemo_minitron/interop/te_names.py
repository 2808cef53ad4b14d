"""Transformer-Engine (fused) and local (unfused) norm names, and a loader that accepts either, strictly.

Transformer Engine fuses the pre-attention and pre-MLP norms into the following linear layer, so
its checkpoints name them ``self_attention.linear_qkv.layer_norm_weight`` and
``mlp.linear_fc1.layer_norm_weight``; the local spec has separate ``input_layernorm.weight`` and
``pre_mlp_layernorm.weight`` modules. megatron-core's local spec already *saves* under the fused
names (``sharded_state_dict_keys_map``), but checkpoints written by other specs or tools use the
unfused ones. :func:`load_dist_weights` maps each requested key onto whichever name the
checkpoint has, and fails with both lists of names when any model tensor has no counterpart or
any checkpoint tensor is left unused: a norm is never silently left at its initial 1.0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Union

import torch

from nemo_minitron.logging import get_logger

log = get_logger(__name__)

PathLike = Union[str, os.PathLike]

#: fused (TE) suffix -> unfused (local) suffix, inside ``decoder.layers.[i.]``.
FUSED_TO_LOCAL = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "self_attention.linear_qkv.layer_norm_bias": "input_layernorm.bias",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
    "mlp.linear_fc1.layer_norm_bias": "pre_mlp_layernorm.bias",
}
LOCAL_TO_FUSED = {v: k for k, v in FUSED_TO_LOCAL.items()}
EXTRA_STATE = "_extra_state"


class UnmatchedKeysError(KeyError):
    """Checkpoint and model tensors do not match one to one; the message lists both sides."""

    def __str__(self) -> str:
        return str(self.args[0])


def _swap(key: str, table: dict[str, str]) -> str:
    for src, dst in table.items():
        if key.endswith("." + src):
            return key[: -len(src)] + dst
    return key


def to_local_name(key: str) -> str:
    """``...linear_qkv.layer_norm_weight`` → ``...input_layernorm.weight`` (other keys unchanged)."""
    return _swap(key, FUSED_TO_LOCAL)


def to_fused_name(key: str) -> str:
    """``...input_layernorm.weight`` → ``...linear_qkv.layer_norm_weight`` (other keys unchanged)."""
    return _swap(key, LOCAL_TO_FUSED)


def alternative_name(key: str) -> str:
    """The other spelling of a norm key (fused ⇄ local); the key itself for every other tensor."""
    fused = to_fused_name(key)
    return fused if fused != key else to_local_name(key)


def _mismatch(where: str, missing: Iterable[str], unexpected: Iterable[str]) -> UnmatchedKeysError:
    missing, unexpected = sorted(missing), sorted(unexpected)
    return UnmatchedKeysError(
        f"{where}: {len(missing)} model tensor(s) not found in the checkpoint {missing[:20]}"
        f"{' ...' if len(missing) > 20 else ''}; {len(unexpected)} checkpoint tensor(s) not used by the model "
        f"{unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}. Refusing to load a partial model "
        "(fused names like linear_qkv.layer_norm_weight and unfused input_layernorm.weight are both accepted)")


def match_state_dict(state: dict[str, torch.Tensor], target_keys: Iterable[str], where: str = "state dict"
                     ) -> dict[str, torch.Tensor]:
    """Rename a plain state dict (fused or unfused norm names) onto ``target_keys``; strict both ways.

    ``_extra_state`` entries are dropped on both sides (TE bookkeeping, not weights).
    """
    targets = {k for k in target_keys if not k.endswith(EXTRA_STATE)}
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state.items():
        if key.endswith(EXTRA_STATE):
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
    from megatron.core import dist_checkpointing

    meta = dist_checkpointing.load_tensors_metadata(str(weights_dir))
    return {k: tuple(getattr(v, "global_shape", ())) for k, v in meta.items()}


def load_dist_weights(model: torch.nn.Module, weights_dir: PathLike, prefix: str = "") -> None:
    """Load a megatron dist checkpoint with fused **or** unfused norm names into ``model`` (any spec, any TP/PP).

    ``prefix`` is the key prefix used in the checkpoint (``"module."`` for NeMo 2). Collective.
    Raises :class:`UnmatchedKeysError` before reading any data when names do not match one to one.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    module = getattr(model, "module", model)
    stored = checkpoint_tensor_keys(weights_dir)
    request = module.sharded_state_dict(prefix=prefix)
    used, missing = set(), []
    for name in list(request):
        sh = request[name]
        if isinstance(sh, ShardedObject) or name.endswith(EXTRA_STATE):
            del request[name]  # TE/FP8 bookkeeping: never needed to reproduce the weights
            continue
        key = sh.key
        if key not in stored and alternative_name(key) in stored:
            sh.key = key = alternative_name(key)
        if key in stored:
            used.add(key)
        else:
            missing.append(key)
    # with a prefix (NeMo 2: "module."), other top-level entries such as optimizer states are not model weights
    others = [k for k in stored if prefix and not k.startswith(prefix)]
    if others:
        log.info("ignoring %d non-model tensor(s) in %s (e.g. %s)", len(others), weights_dir, others[0])
    unexpected = {k for k in stored if k not in used and not k.endswith(EXTRA_STATE) and k not in others}
    if missing or unexpected:
        raise _mismatch(f"checkpoint {weights_dir}", missing, unexpected)
    renamed = [k for k in used if k not in {sh.key for sh in module.sharded_state_dict(prefix=prefix).values()
                                            if hasattr(sh, "key")}]
    if renamed:
        log.info("loading %d tensor(s) stored under their alternative norm names (e.g. %s)", len(renamed), renamed[0])
    wanted = set(request)
    state = dist_checkpointing.load(request, str(Path(weights_dir)))
    # dist_checkpointing.load merges the checkpoint's common.pt into the result: NeMo keeps the Lightning trainer
    # state there (epoch, global_step, loops, optimizer_states, ...). Only the keys asked for are model weights.
    state = {k: v for k, v in state.items() if k in wanted}
    if prefix:
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    missing_sd, unexpected_sd = module.load_state_dict(state, strict=False)
    missing_sd = [k for k in missing_sd if not k.endswith(EXTRA_STATE)]
    unexpected_sd = [k for k in unexpected_sd if not k.endswith(EXTRA_STATE)]
    if missing_sd or unexpected_sd:
        raise _mismatch(f"checkpoint {weights_dir} (state dict)", missing_sd, unexpected_sd)
