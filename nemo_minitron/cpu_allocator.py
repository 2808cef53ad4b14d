"""glibc malloc settings for training on the CPU (applied once per process; nothing on a GPU machine).

A training step on the CPU frees and re-allocates the same few hundred MiB of activations, logits and
gradients every step. With glibc's defaults every buffer of 32 MiB or more (the logits of a micro-batch,
their gradient, large weight gradients) is a fresh ``mmap`` region, and freed heap memory above 128 KiB
goes back to the kernel, so every step first-touches those buffers again: a page fault per 4 KiB page,
zero-filled by the kernel. Here every allocation is served from the heap (``M_MMAP_MAX=0``) and up to
:data:`TRIM_THRESHOLD` of freed memory at its top is kept for reuse, as a caching allocator would: a
training step then takes almost no page faults (KD step of ``benchmarks/bench_distill.py``: ~49,000
faults and 1090 ms before, ~10 faults and 908 ms after, one thread). The cost is resident memory: freed
buffers stay mapped for the next step (the KD run's peak RSS there grows by ~20 %).

The user's own settings win: nothing is changed when a ``MALLOC_MMAP_MAX_``, ``MALLOC_MMAP_THRESHOLD_``
or ``MALLOC_TRIM_THRESHOLD_`` variable or ``GLIBC_TUNABLES`` with malloc keys is set, or when
``NEMO_MINITRON_CPU_MALLOC=0``. Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Optional

log = logging.getLogger(__name__)

#: ``mallopt`` parameter numbers from glibc's ``malloc.h``.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4

#: Freed memory at the top of the heap kept for reuse before it is returned to the kernel (mallopt's
#: largest value, 2 GiB - 1: one SmolLM2-sized KD step frees about 1 GiB of logits and gradients at once).
TRIM_THRESHOLD = (1 << 31) - 1

_USER_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_applied: Optional[bool] = None


def _glibc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it)
        return libc
    except (OSError, AttributeError):
        return None


def user_configured(environ=os.environ) -> bool:
    """True when the environment already sets glibc malloc options (then they are left as given)."""
    return any(k in environ for k in _USER_ENV) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def tune(environ=os.environ) -> bool:
    """Serve allocations from the heap and keep :data:`TRIM_THRESHOLD` of it, once; True if this process runs so."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if environ.get("NEMO_MINITRON_CPU_MALLOC", "1") == "0" or user_configured(environ):
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _applied = ok
    log.debug("glibc malloc: no mmap, trim threshold %d MiB (%s)", TRIM_THRESHOLD >> 20,
              "applied" if ok else "refused")
    return ok
