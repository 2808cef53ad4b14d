"""The NeMo tier: tests against real NeMo 2.7 (run by scripts/test_nemo.sh in .venv-nemo).

Every test here is marked ``nemo`` and skipped, with the reason shown, when NeMo's LLM collection is not
importable, so the main tier passes without NeMo. NeMo work runs in worker processes
(``tests/nemo/workers/nemo_ops.py``) because NeMo's CPU shims patch torch and megatron globally.
"""

from __future__ import annotations

import importlib.util

import pytest

NEMO_MISSING = next((m for m in ("nemo", "nemo_run", "fiddle") if importlib.util.find_spec(m) is None), None)


def pytest_collection_modifyitems(config, items):
    """Mark the tier's tests ``nemo``; skip them when NeMo is not installed."""
    skip = pytest.mark.skip(reason=f"NeMo tier: {NEMO_MISSING} is not importable (run scripts/test_nemo.sh)")
    for item in items:
        if "tests/nemo/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.nemo)
            if NEMO_MISSING:
                item.add_marker(skip)
