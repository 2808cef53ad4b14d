"""glibc malloc settings for training on the CPU (applied once per process; nothing on a GPU machine).

A training step on the CPU frees and re-allocates the same few hundred MiB of activations, logits and
gradients every step. With glibc's defaults most of those buffers come from fresh ``mmap`` regions (or
from heap memory that was just returned to the kernel), so every step first-touches them again: a page
fault per 4 KiB page, zero-filled by the kernel. Serving allocations up to 32 MiB from the heap and
keeping up to 1 GiB of freed heap memory for reuse removes most of those faults: measured 10-25 %
shorter LM and KD steps on 2 cores (``benchmarks/bench_distill.py``). Larger buffers (glibc's maximum
threshold is 32 MiB on 64-bit) are still mapped per allocation.

The user's own settings win: nothing is changed when ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` with malloc keys is set, or when
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
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3

#: Allocations up to this size come from the heap (glibc's largest allowed value on 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Freed memory at the top of the heap kept for reuse before it is returned to the kernel.
TRIM_THRESHOLD = 1 << 30

_USER_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
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
    """Apply :data:`MMAP_THRESHOLD` / :data:`TRIM_THRESHOLD` once; True if this process runs with them."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if environ.get("NEMO_MINITRON_CPU_MALLOC", "1") == "0" or user_configured(environ):
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _applied = ok
    log.debug("glibc malloc: mmap threshold %d MiB, trim threshold %d MiB (%s)", MMAP_THRESHOLD >> 20,
              TRIM_THRESHOLD >> 20, "applied" if ok else "refused")
    return ok
