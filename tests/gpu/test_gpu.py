"""GPU tier (``pytest -m gpu``): skipped with the reason where no CUDA device is present.

The same checks, plus speed and memory figures, print as one table with ``bash scripts/gpu_check.sh``.
"""

import pytest
import torch

from tests.gpu import rows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU tier: no CUDA device (run on a GPU machine)"),
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return rows.ensure_reference(tmp_path_factory.mktemp("gpu_ref"))


def _assert(row_or_rows):
    for row in row_or_rows if isinstance(row_or_rows, list) else [row_or_rows]:
        assert row.status == "PASS", row


@pytest.mark.timeout(600)
def test_bf16_logits_match_cpu_fp32(reference):
    _assert(rows.row_logits(reference))


@pytest.mark.timeout(600)
def test_prune_on_cuda_keeps_the_cpu_units(reference):
    _assert(rows.row_prune(reference))


@pytest.mark.timeout(600)
def test_kd_steps_bf16_distributed_optimizer(reference):
    _assert(rows.row_kd(reference))


@pytest.mark.timeout(600)
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="GPU tier: TP=2 needs 2+ CUDA devices")
@pytest.mark.parametrize("sp", [False, True])
def test_tp2_logits(reference, sp):
    _assert(rows.row_tp2(reference, sp))
