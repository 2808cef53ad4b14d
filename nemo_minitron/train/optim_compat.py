"""Narrow fixes around megatron-core's optimizer checkpoint loading (see docs: mcore_on_cpu.md).

With torch's Adam/AdamW (no apex / Transformer Engine: every CPU run, and GPUs without apex),
megatron-core 0.16-0.19's ``DistributedOptimizer`` load path (a) asserts on ``step`` when the
optimizer has no state yet, and (b) with ``dp_reshardable`` restores one ``step`` tensor shared by
every parameter (wrong bias correction after resume); megatron-core 0.15.x (c) cannot build the
``dp_reshardable`` state at all while Adam's 0-dim ``step`` sits in the per-parameter state. The fixes,
each one function:

* :func:`prime_optimizer_state` allocates the state with a zero-gradient, zero-LR, zero-decay step
  (parameters are unchanged), as Megatron-LM does before loading;
* :func:`set_adam_step` writes the saved step count back as one tensor per parameter;
* :func:`distopt_sharded_state_dict` builds the optimizer's sharded state with ``step`` held out of the
  buckets where the installed megatron-core needs it (:func:`~nemo_minitron.mcore_compat.distopt_bucket_step_unsupported`),
  carrying it as a local, unsaved entry the way 0.16+ does (the count itself comes from ``trainer_state.json``).
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from nemo_minitron import mcore_compat


def torch_optimizers(optimizer) -> Iterator[torch.optim.Optimizer]:
    """The torch optimizers inside a megatron (possibly chained) optimizer."""
    chained = getattr(optimizer, "chained_optimizers", None)
    if chained is not None:
        for opt in chained:
            yield from torch_optimizers(opt)
        return
    inner = getattr(optimizer, "optimizer", None)
    if isinstance(inner, torch.optim.Optimizer):
        yield inner
    elif isinstance(optimizer, torch.optim.Optimizer):
        yield optimizer


def adam_step(optimizer) -> Optional[int]:
    """The Adam step count held in the optimizer state (None before the first step)."""
    for opt in torch_optimizers(optimizer):
        for state in opt.state.values():
            if "step" in state:
                return int(float(state["step"]))
    return None


def set_adam_step(optimizer, step: int) -> None:
    """Give every parameter's Adam state its own ``step`` tensor equal to ``step``."""
    for opt in torch_optimizers(optimizer):
        for state in opt.state.values():
            if "step" in state:
                old = state["step"]
                if torch.is_tensor(old):
                    state["step"] = torch.tensor(float(step), dtype=old.dtype, device=old.device)
                else:
                    state["step"] = step


@torch.no_grad()
def prime_optimizer_state(optimizer) -> None:
    """Allocate Adam state with a no-op step (zero grads, LR 0, weight decay 0) if it is empty."""
    for opt in torch_optimizers(optimizer):
        if len(opt.state):
            continue
        saved = [(g.get("lr"), g.get("weight_decay")) for g in opt.param_groups]
        for g in opt.param_groups:
            g["lr"], g["weight_decay"] = 0.0, 0.0
            for p in g["params"]:
                if p.numel():
                    p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for g, (lr, wd) in zip(opt.param_groups, saved):
            g["lr"], g["weight_decay"] = lr, wd


def _distributed_optimizers(optimizer) -> list:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    parts = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    return [opt for opt in parts if isinstance(opt, DistributedOptimizer)]


def _bucket_entries(tree, marker: str):
    """The dicts holding ``marker`` (one per parameter bucket entry) anywhere in a nested state ``tree``."""
    if isinstance(tree, dict):
        if marker in tree:
            yield tree
            return
        children = tree.values()
    elif isinstance(tree, (list, tuple)):
        children = tree
    else:
        return
    for child in children:
        yield from _bucket_entries(child, marker)


def _add_local_steps(tree, step: torch.Tensor) -> None:
    """Give every non-padding bucket entry of a ``dp_reshardable`` state a local, unsaved ``step``."""
    from megatron.core.dist_checkpointing.mapping import LocalNonpersistentObject

    for entry in _bucket_entries(tree, "padding"):
        padding = entry["padding"]
        if not (padding.unwrap() if isinstance(padding, LocalNonpersistentObject) else padding):
            entry["step"] = LocalNonpersistentObject(step.clone())


def _strip_steps(tree) -> None:
    """Drop ``step`` from every bucket entry (a fresh dict per parameter) of a dp_reshardable state."""
    for entry in _bucket_entries(tree, "gbuf_local_start"):
        entry.pop("step", None)


def distopt_sharded_state_dict(optimizer, model_sharded_state_dict: dict, is_loading: bool, metadata: dict) -> dict:
    """``optimizer.sharded_state_dict(...)`` with Adam's ``step`` out of the buckets where megatron needs that.

    Where the installed megatron-core cannot hold the 0-dim step in its bucket entries, each distributed
    optimizer's bucket view is read without it for the duration of this call (the optimizer's own state is
    not touched) and the entries get a local, unsaved step instead.
    """
    patched = []
    if mcore_compat.distopt_bucket_step_unsupported():
        for dist_opt in _distributed_optimizers(optimizer):
            original = dist_opt.get_parameter_state_dp_reshardable

            def without_step(original=original):
                state = original()
                _strip_steps(state)
                return state

            dist_opt.get_parameter_state_dp_reshardable = without_step  # this instance, this call only
            patched.append(dist_opt)
    try:
        sharded = optimizer.sharded_state_dict(model_sharded_state_dict, is_loading=is_loading, metadata=metadata)
    finally:
        for dist_opt in patched:
            del dist_opt.get_parameter_state_dp_reshardable
    steps = [state["step"] for opt in patched for state in opt.optimizer.state.values() if "step" in state]
    if steps:
        # loading copies every state entry, step included, from the bucket entries: give them one to copy
        _add_local_steps(sharded, torch.as_tensor(steps[0]).detach())
    return sharded
