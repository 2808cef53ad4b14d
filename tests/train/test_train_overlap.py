"""DDP overlap keys: ``model.optim.overlap_grad_sync`` / ``overlap_param_sync`` resolve to megatron's
``overlap_grad_reduce`` / ``overlap_param_gather`` (on with a GPU and the distributed optimizer, off on CPU), and
at DP=2 on gloo training with them on gives the losses, validation loss and saved weights of training with them
off (the overlapped parameter all-gather is completed before evaluating and saving)."""

import pytest

from nemo_minitron.config.model import ConfigError
from nemo_minitron.config.train import OptimConfig
from tests.launch import REPO, torchrun
from tests.workers.distill_common import make_checkpoint, tiny, train_cfg

WORKER = REPO / "tests" / "workers" / "train_overlap.py"


@pytest.mark.parametrize("name,on_gpu,grad,param,want", [
    ("distributed_fused_adam", True, None, None, (True, True)),
    ("distributed_fused_adam", False, None, None, (False, False)),
    ("adam", True, None, None, (False, False)),
    ("distributed_fused_adam", True, False, None, (False, True)),
    ("distributed_fused_adam", False, True, True, (True, True)),
    ("adam", False, True, None, (True, False)),
])
def test_overlap_keys_resolve(name, on_gpu, grad, param, want):
    optim = OptimConfig(name=name, overlap_grad_sync=grad, overlap_param_sync=param)
    assert optim.ddp_overlap(on_gpu) == {"overlap_grad_reduce": want[0], "overlap_param_gather": want[1]}


def test_param_overlap_without_the_distributed_optimizer_is_refused():
    cfg = train_cfg("finetune", optim="adam")
    cfg.model.restore_from_path = "student"
    cfg.model.optim.overlap_param_sync = True
    with pytest.raises(ConfigError, match="model.optim.overlap_param_sync=true needs the distributed optimizer"):
        cfg.validate()


@pytest.fixture(scope="module")
def overlap_runs(world, tmp_path_factory):
    work = tmp_path_factory.mktemp("overlap")
    make_checkpoint(tiny(num_layers=3, hidden_size=96, ffn_hidden_size=192), work / "teacher", seed=3,
                    output_scale=20.0)
    make_checkpoint(tiny(num_layers=2), work / "student", seed=5)
    (res,) = torchrun(WORKER, 2, [str(work)], timeout=400)
    return res


@pytest.mark.multiproc
@pytest.mark.parametrize("tag", ["grad", "both"])
def test_overlapped_training_equals_plain_training(overlap_runs, tag):
    off, on = overlap_runs["off"], overlap_runs[tag]
    assert off["ddp"] == [False, False] and on["ddp"] == [True, tag == "both"]
    assert off["status"] == on["status"] == "completed"
    assert len(set(off["losses"])) == 3  # the loss moves
    # same buckets, same collectives, only their timing differs: identical numbers
    assert on["losses"] == pytest.approx(off["losses"], rel=1e-6, abs=0)
    assert on["val_loss"] == pytest.approx(off["val_loss"], rel=1e-6, abs=0)
    assert on["saved_vs_off"] <= 1e-6


@pytest.mark.multiproc
def test_param_overlap_is_synchronised_before_evaluating(overlap_runs):
    # with the all-gather overlapped, half of each rank's weights lag one step until sync_params: it must change
    # them (else this test could not tell a missing sync), and without the overlap nothing is left to sync
    assert overlap_runs["both"]["max_abs_change"] > 1e-5
    assert overlap_runs["off"]["max_abs_change"] == 0.0
