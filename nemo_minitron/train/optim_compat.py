"""Narrow fixes around megatron-core's optimizer checkpoint loading (see docs: mcore_on_cpu.md).

With torch's Adam/AdamW (no apex / Transformer Engine: every CPU run, and GPUs without apex),
megatron-core 0.16-0.19's ``DistributedOptimizer`` load path (a) asserts on ``step`` when the
optimizer has no state yet, and (b) with ``dp_reshardable`` restores one ``step`` tensor shared by
every parameter (wrong bias correction after resume). The fixes, each one function:

* :func:`prime_optimizer_state` allocates the state with a zero-gradient, zero-LR, zero-decay step
  (parameters are unchanged), as Megatron-LM does before loading;
* :func:`set_adam_step` writes the saved step count back as one tensor per parameter.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch


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
