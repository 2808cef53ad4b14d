"""KD across layouts: vocab-parallel KL at TP=2 equals the dense value; TP=2 / PP=2 / DP=2 training gives the
TP=1 PP=1 loss trajectory; kill-and-resume under the distributed optimizer at DP=2 reproduces the unbroken curve.

One 2-process torchrun launch runs all multi-process checks; the references run in this process.
"""

import pytest

from tests.launch import REPO, torchrun
from tests.workers.distill_common import build_trainer, make_checkpoint, tiny, train_cfg

WORKER = REPO / "tests" / "workers" / "distill_layouts.py"
PAIRS = [["decoder.final_layernorm", "decoder.final_layernorm"]]
# fp32 on CPU: TP/PP/DP change reduction orders only (~1e-7 relative); a wrong shard or scale is >1e-2.
RTOL = 1e-5


def _ref(world, work, tag, steps=3, optim="distributed_fused_adam", **kw):
    cfg = train_cfg("distill", teacher=str(work / "teacher"), max_steps=steps, optim=optim, **kw)
    tr = build_trainer(cfg, world, tiny(num_layers=2), work / f"ref_{tag}", student_ckpt=work / "student")
    tr.fit()
    tr.close()
    return [h["loss"] for h in tr.history], [h["grad_norm"] for h in tr.history]


@pytest.fixture(scope="module")
def layouts(world, tmp_path_factory):
    work = tmp_path_factory.mktemp("kd_layouts")
    # teacher deeper and wider than the student: 4 layers x 96 vs 2 layers x 64 (projection for the pairs)
    make_checkpoint(tiny(num_layers=4, hidden_size=96, ffn_hidden_size=192), work / "teacher", seed=3,
                    output_scale=30.0)
    make_checkpoint(tiny(num_layers=2), work / "student", seed=5)
    refs = {
        "pairs": _ref(world, work, "pairs", intermediate_pairs=PAIRS),
        "plain": _ref(world, work, "plain"),
        "topk_t": _ref(world, work, "topk", top_k=20, temperature=2.0, scale_by_t2=True, skip_lm_loss=False),
        "unbroken4": _ref(world, work, "unbroken4", steps=4, intermediate_pairs=PAIRS),
    }
    (res,) = torchrun(WORKER, 2, [str(work)], timeout=400)
    return refs, res


@pytest.mark.multiproc
def test_vocab_parallel_kl_equals_dense(layouts):
    _, res = layouts
    for name, r in res["kl_tp2"].items():
        assert r["loss_diff"] < 1e-5 * max(1.0, abs(r["loss"])), (name, r)
        assert r["grad_diff"] < 1e-6 * max(1.0, r["grad_max"]), (name, r)  # fp32 rounding of the largest entry


@pytest.mark.multiproc
@pytest.mark.parametrize("key,ref", [("tp2", "pairs"), ("pp2", "pairs"), ("dp2", "pairs"), ("pp2_adam", "plain"),
                                     ("tp2_topk_t", "topk_t")])
def test_loss_trajectory_matches_single_rank(layouts, key, ref):
    refs, res = layouts
    status, loss, gnorm = res[key]
    ref_loss, ref_gnorm = refs[ref]
    assert status == "completed"
    assert len(loss) == len(ref_loss) == 3
    assert loss == pytest.approx(ref_loss, rel=RTOL), key
    assert gnorm == pytest.approx(ref_gnorm, rel=RTOL), key
    assert len(set(round(x, 6) for x in loss)) > 1  # the loss actually moves


@pytest.mark.multiproc
@pytest.mark.parametrize("key", ["dp2_resume", "pp2_resume"])
def test_kill_and_resume_reproduces_unbroken_curve(layouts, key):
    """DP=2 with the distributed optimizer, PP=2 (1F1B) with plain Adam: stop at step 2, resume, same curve."""
    refs, res = layouts
    r = res[key]
    assert r["status"] == ["preempted", "completed"]
    assert len(r["losses"]) == 4
    assert r["losses"] == pytest.approx(refs["unbroken4"][0], rel=RTOL)
