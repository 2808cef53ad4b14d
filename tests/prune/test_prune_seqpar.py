"""Importance statistics stay exact under sequence parallelism (issue 9 deliver 3): a 2-rank gloo TP group."""

import pytest
import torch

from nemo_minitron.prune.seqpar import local_mask
from tests.launch import REPO, torchrun

WORKER = REPO / "tests" / "workers" / "seqpar_stats.py"


def test_local_mask_blocks():
    mask = torch.arange(12).view(2, 6) % 4 > 0
    assert torch.equal(torch.cat([local_mask(mask, r, 3) for r in range(3)], dim=1), mask)
    assert local_mask(None, 1, 2) is None
    with pytest.raises(ValueError, match="not divisible"):
        local_mask(mask, 0, 4)


@pytest.mark.multiproc
def test_sequence_parallel_importance_equals_full_sequence():
    results = torchrun(WORKER, 2, timeout=240)
    assert sorted(r["rank"] for r in results) == [0, 1]
    for r in results:
        for how in ("mean", "l2", "var"):
            d = r[how]
            assert d["valid_equal"], (how, r)
            assert d["max_diff"] < 1e-5 and d["score_diff"] < 1e-5, (how, r)
            assert d["naive_diff"] > 1e-2, (how, r)  # the test can fail: per-shard aggregates differ
        assert r["cos_diff"] < 1e-5, r
