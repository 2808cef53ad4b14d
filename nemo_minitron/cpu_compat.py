"""Make real megatron-core run on a machine without a GPU.

megatron-core has no CPU mode: a few dozen executed call sites hard-code CUDA (``device="cuda"``,
``torch.cuda.current_device()``, ``tensor.cuda()``, ``grad.type() == "torch.cuda.FloatTensor"``).
Instead of patching call sites, this module installs three mechanisms, in order of preference:

1. public switches are set by the builder/runtime (``use_cpu_initialization=True``, gloo, a no-op
   RNG tracker); nothing here;
2. ``torch.cuda.current_device/synchronize/current_stream/Stream/stream`` are aliased to the
   device-agnostic stand-ins in ``torch.cpu``;
3. a :class:`torch.overrides.TorchFunctionMode` rewrites ``device="cuda"`` arguments to CPU, makes
   ``Tensor.cuda()`` a no-op and makes ``Tensor.type()`` report ``torch.cuda.*`` names.

:func:`activate` does nothing when CUDA is available, so the GPU path is untouched. The function
mode is thread-local: it is entered for the thread that calls :func:`activate` (the main thread in
our launchers); call :func:`activate` again from any other thread that runs megatron code.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from nemo_minitron.logging import get_logger

log = get_logger(__name__)

_CPU_TYPE_TO_CUDA = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.DoubleTensor": "torch.cuda.DoubleTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
    "torch.LongTensor": "torch.cuda.LongTensor",
    "torch.IntTensor": "torch.cuda.IntTensor",
    "torch.ByteTensor": "torch.cuda.ByteTensor",
    "torch.BoolTensor": "torch.cuda.BoolTensor",
}

_state = threading.local()
_aliases_installed = False


def _to_cpu_device(value: Any) -> Any:
    """Map a CUDA device spec (str, int index, torch.device) to CPU; leave others alone."""
    if isinstance(value, torch.device):
        return torch.device("cpu") if value.type == "cuda" else value
    if isinstance(value, str) and value.startswith("cuda"):
        return torch.device("cpu")
    return value


class CudaToCpuMode(TorchFunctionMode):
    """Torch function mode that redirects CUDA placement requests to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CPU_TYPE_TO_CUDA.get(name, name)
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if func in (torch.Tensor.to,) and args:
            args = tuple(_to_cpu_device(a) if i > 0 else a for i, a in enumerate(args))
        return func(*args, **kwargs)


def _alias(target: Any) -> Any:
    """``target`` itself for a class, a distinct wrapper for a function.

    torch.compile keeps one handler per function object and refuses ``torch.cuda.synchronize`` being
    ``torch.cpu.synchronize`` itself ("Handler already registered").
    """
    if isinstance(target, type):
        return target

    @functools.wraps(target)
    def alias(*args, **kwargs):
        return target(*args, **kwargs)

    return alias


def _install_cuda_aliases() -> None:
    global _aliases_installed
    if _aliases_installed:
        return
    for name in ("current_device", "synchronize", "current_stream", "Stream", "stream", "Event"):
        if hasattr(torch.cpu, name):
            setattr(torch.cuda, name, _alias(getattr(torch.cpu, name)))
    _aliases_installed = True


def is_needed() -> bool:
    """True when no CUDA device is usable, i.e. when megatron-core needs this layer."""
    return not torch.cuda.is_available()


def is_active() -> bool:
    """True when the compatibility mode is entered in the calling thread."""
    return getattr(_state, "mode", None) is not None


def activate() -> bool:
    """Enable the CPU compatibility layer in the calling thread if no GPU is present.

    Returns True if the layer is (now) active, False on a GPU machine where it stays off.
    Idempotent per thread.
    """
    if not is_needed():
        return False
    _install_cuda_aliases()
    if not is_active():
        mode = CudaToCpuMode()
        mode.__enter__()
        _state.mode = mode
        log.debug("megatron-core CPU compatibility layer active in thread %s", threading.get_ident())
    return True


def deactivate() -> None:
    """Leave the compatibility mode in the calling thread (aliases stay installed; they are inert)."""
    mode = getattr(_state, "mode", None)
    if mode is not None:
        mode.__exit__(None, None, None)
        _state.mode = None
