"""glibc malloc settings for CPU training: applied by the runtime, left alone when the user set their own."""

import json
import os
import subprocess
import sys

import pytest

from nemo_minitron import cpu_allocator

# In a fresh process: allocate and touch a 64 MiB buffer, report how much of it glibc mapped with mmap.
_PROBE = r"""
import ctypes, json, sys
import torch
from nemo_minitron import cpu_allocator
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = cpu_allocator.tune()
before = libc.mallinfo2().hblkhd
x = torch.ones(16 << 20)  # 64 MiB of float32: above the largest mmap threshold glibc allows
after = libc.mallinfo2().hblkhd
print(json.dumps({"applied": applied, "mmapped_mib": (after - before) / 2**20}))
"""


def _probe(**env) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=full, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or cpu_allocator._glibc() is None, reason="needs glibc")
def test_tuned_process_serves_a_64mib_buffer_from_the_heap():
    default = _probe(NEMO_MINITRON_CPU_MALLOC="0")
    tuned = _probe()
    assert default == {"applied": False, "mmapped_mib": pytest.approx(64, abs=0.1)}
    assert tuned == {"applied": True, "mmapped_mib": 0.0}


def test_user_settings_win():
    assert cpu_allocator.user_configured({"MALLOC_TRIM_THRESHOLD_": "0"})
    assert cpu_allocator.user_configured({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    assert not cpu_allocator.user_configured({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"})
    if cpu_allocator._glibc() is not None:
        assert _probe(MALLOC_MMAP_THRESHOLD_="65536")["applied"] is False
