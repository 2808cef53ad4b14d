"""Same weights, same logits at TP=1, TP=2, PP=2, TP=2xPP=2 (and PP=4, TP=2+DP=2); checkpoints reshard bitwise.

The reference checkpoint and logits are made in this (TP=1) process; one torchrun launch per world
size checks several layouts, saves at each layout, and the parent reloads those at TP=1.
"""

import pytest
import torch

from nemo_minitron.checkpoint import load_checkpoint
from nemo_minitron.models.builder import build_gpt_model
from nemo_minitron.models.forward import forward_logits
from tests.launch import REPO, torchrun

# fp32 on CPU: TP changes the reduction order of row-parallel matmuls (all-reduce of partial sums),
# so logits agree to ~1e-6, not bitwise. 2e-5 is far below the ~1e-1 a wrong slice causes.
LOGIT_TOL = 2e-5
WORKER = REPO / "tests" / "workers" / "foundation_layouts.py"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, world, tiny_cfg):
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.runtime import seed_everything

    tmp = tmp_path_factory.mktemp("layouts")
    cfg = tiny_cfg.replace(qk_layernorm=True, add_qkv_bias=True)  # exercise every sharded tensor kind
    seed_everything(7)
    model = build_gpt_model(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (4, 24), generator=torch.Generator().manual_seed(0))
    logits = forward_logits(model, tokens)
    save_checkpoint(model, cfg, tmp / "ref")
    torch.save({"tokens": tokens, "logits": logits}, tmp / "ref_logits.pt")
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    return tmp, cfg, state, tokens, logits


def _check_results(results, layouts):
    print(*results, sep="\n")
    assert {r["layout"] for r in results} == set(layouts)
    for r in results:
        assert r["diff_before_load"] > 1e-2, f"{r}: differently-seeded init should differ before loading"
        assert r["max_abs_diff"] < LOGIT_TOL, f"logits differ at {r['layout']}: {r}"
        if "diff_wrong_slice" in r:
            assert r["diff_wrong_slice"] > 100 * LOGIT_TOL, f"wrong TP slice went unnoticed: {r}"


def _check_reload(out_dir, cfg, state, tokens, logits, layouts):
    for layout in layouts:
        model = build_gpt_model(cfg)
        load_checkpoint(model, cfg, out_dir / layout)
        for key, ref in state.items():
            assert torch.equal(model.state_dict()[key], ref), f"{layout}: {key} not bitwise equal after reshard"
        assert torch.equal(forward_logits(model, tokens), logits)


@pytest.mark.compat
@pytest.mark.multiproc
@pytest.mark.timeout(420)
def test_two_processes_tp2_pp2(reference):
    tmp, cfg, state, tokens, logits = reference
    layouts = ["2x1", "1x2"]
    results = torchrun(WORKER, 2, [str(tmp / "ref"), str(tmp / "ref_logits.pt"), str(tmp / "out"), *layouts])
    assert len(results) == 2 * len(layouts)
    _check_results(results, layouts)
    assert any("diff_wrong_slice" in r for r in results)
    _check_reload(tmp / "out", cfg, state, tokens, logits, layouts)


@pytest.mark.multiproc
@pytest.mark.timeout(480)
def test_four_processes_tp2xpp2(reference):
    tmp, cfg, state, tokens, logits = reference
    layouts = ["2x2", "1x4", "2x1"]  # 2x1 on 4 ranks = TP2 with DP2
    results = torchrun(WORKER, 4, [str(tmp / "ref"), str(tmp / "ref_logits.pt"), str(tmp / "out4"), *layouts])
    assert len(results) == 4 * len(layouts)
    _check_results(results, layouts)
    assert {r["dp_size"] for r in results if r["layout"] == "2x1"} == {2}
    _check_reload(tmp / "out4", cfg, state, tokens, logits, layouts)
