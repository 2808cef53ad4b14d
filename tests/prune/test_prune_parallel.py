"""Scores, kept indices and pruned weights are the same at TP=1, DP=2, TP=2, PP=2 and TP=2×PP=2.

Surgery runs at the layout (sharded) whenever the pruned shape fits it, including layers that move
to another pipeline stage; a shape that does not fit PP falls back to a replicated copy. Either way
the saved weights equal a TP=1 prune's bit for bit.
"""

import json

import pytest
import torch

from nemo_minitron.models.forward import forward_logits
from tests.launch import REPO, torchrun
from tests.tiny import tiny
from tests.workers.prune_layouts import TOKENS, VARIANTS, job_for

pytestmark = pytest.mark.multiproc

WORKER = REPO / "tests" / "workers" / "prune_layouts.py"


def _close(a, b, path="scores"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        torch.testing.assert_close(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                                   rtol=2e-5, atol=1e-7, msg=path)
    else:
        assert a == pytest.approx(b, rel=2e-5, abs=1e-7), path


def _model(path):
    from nemo_minitron import runtime
    from nemo_minitron.checkpoint import load_checkpoint, load_model_config
    from nemo_minitron.models.builder import build_gpt_model

    cfg = load_model_config(path)
    runtime.init_model_parallel(1, 1, seed=1)
    model = build_gpt_model(cfg)
    load_checkpoint(model, cfg, path)
    return model


def _state(path):
    return {k: v for k, v in _model(path).state_dict().items() if isinstance(v, torch.Tensor)}


@pytest.mark.compat
@pytest.mark.timeout(1500)  # 3 + 4 processes, 10 prunes; ~3 min on an idle 2-core machine
def test_prune_is_layout_independent(tmp_path):
    from nemo_minitron import runtime
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.models.builder import build_gpt_model
    from nemo_minitron.prune.pipeline import run_prune

    runtime.init_model_parallel(1, 1, seed=3)
    cfg = tiny()
    save_checkpoint(build_gpt_model(cfg), cfg, tmp_path / "ckpt")
    g = torch.Generator().manual_seed(9)
    tokens = torch.randint(0, 256, (32, 32), generator=g)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[1::4, 20:] = False
    torch.save({"tokens": tokens, "mask": mask}, tmp_path / "calib.pt")

    for variant in VARIANTS:
        run_prune(job_for(tmp_path, 1, 1, "ref" if variant == "width" else f"ref_{variant}", variant))
    refs = {v: json.loads((tmp_path / ("ref" if v == "width" else f"ref_{v}") / "pruning_report.json").read_text())
            for v in VARIANTS}
    results = torchrun(WORKER, 2, [str(tmp_path), "1x1,2x1,1x2,1x2@drop,1x2@three"], timeout=500)
    results += torchrun(WORKER, 4, [str(tmp_path), "2x2,2x2@drop"], timeout=500)
    tp2 = [r.pop("tp2_logits") for r in results if "tp2_logits" in r]
    results = [r for r in results if r]
    assert len(tp2) == 2
    assert sorted(f"{r['layout']}@{r['variant']}/w{r['world']}" for r in results) == [
        "1x1@width/w2", "1x2@drop/w2", "1x2@three/w2", "1x2@width/w2", "2x1@width/w2", "2x2@drop/w4",
        "2x2@width/w4"]
    assert refs["drop"]["kept"]["kept_layers"] == [3, 4] and refs["three"]["pruned_config"]["num_layers"] == 3
    ref_states = {v: _state(tmp_path / ("ref" if v == "width" else f"ref_{v}")) for v in VARIANTS}
    ref_logits = forward_logits(_model(tmp_path / "ref"), TOKENS)
    for logits in tp2:  # the pruned checkpoint gives the same logits at TP=2
        torch.testing.assert_close(torch.tensor(logits), ref_logits, atol=1e-5, rtol=1e-5)
    for r in results:
        rep = json.loads((tmp_path / r["out"] / "pruning_report.json").read_text())
        tag, ref, ref_state = r["out"], refs[r["variant"]], ref_states[r["variant"]]
        assert rep["layout"]["world_size"] == r["world"]
        assert rep["layout"]["sharded_surgery"] is (r["variant"] != "three"), tag
        assert rep["kept"] == ref["kept"], tag
        assert rep["dropped"] == ref["dropped"], tag
        assert rep["pruned_config"] == ref["pruned_config"], tag
        if r["variant"] != "drop":  # drop_layers alone computes no scores
            _close(rep["scores"], ref["scores"], tag)
        state = _state(tmp_path / r["out"])
        assert state.keys() == ref_state.keys()
        for k in state:
            assert torch.equal(state[k], ref_state[k]), f"{tag}: {k}"
        assert rep["validation"]["loss_after"] == pytest.approx(ref["validation"]["loss_after"], rel=1e-6)
