"""Shared fixtures: a single-process gloo world with megatron-core model parallel state, tiny configs."""

from __future__ import annotations

import os
import sys


def _gpu_tier_selected(argv: list[str]) -> bool:
    """True for ``pytest -m gpu`` (or NEMO_MINITRON_GPU=1): then CUDA stays visible; otherwise tests run on CPU."""
    if os.environ.get("NEMO_MINITRON_GPU") == "1":
        return True
    exprs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"] + [a[2:] for a in argv if a.startswith("-m")
                                                                          and len(a) > 2]
    return any("gpu" in e and "not gpu" not in e for e in exprs)


if not _gpu_tier_selected(sys.argv):
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def world():
    """One-process gloo world (TP=1, PP=1) shared by the whole session."""
    from nemo_minitron import runtime

    ctx = runtime.init_model_parallel(1, 1, seed=1234)
    yield ctx


@pytest.fixture(scope="session")
def tiny_cfg():
    """The tiny Llama-style test model: 4 layers, hidden 64, 8 heads / 4 groups, vocab 256 (use .replace())."""
    from tests.tiny import tiny

    return tiny()


def pytest_collection_modifyitems(config, items):
    """Skip tests marked slow unless NEMO_MINITRON_SLOW=1."""
    if os.environ.get("NEMO_MINITRON_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set NEMO_MINITRON_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
