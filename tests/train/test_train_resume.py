"""Stop-and-resume continues exactly (single process, every megatron-core stack): a KD run stopped after step 2 and
resumed from its train-state checkpoint gives the losses and final weights of the same run left uninterrupted, with
the distributed optimizer (dp_reshardable optimizer checkpoint; megatron-core 0.15 keeps Adam's ``step`` inside the
bucket state, 0.16+ outside it) and with plain Adam."""

import pytest
import torch

from nemo_minitron.train import signals
from tests.workers.distill_common import build_trainer, make_checkpoint, tiny, train_cfg

STUDENT = tiny(num_layers=2)
STEPS, STOP_AT = 4, 2


@pytest.fixture(scope="module")
def ckpts(world, tmp_path_factory):
    work = tmp_path_factory.mktemp("resume")
    make_checkpoint(tiny(num_layers=3, hidden_size=96, ffn_hidden_size=192), work / "teacher", seed=3,
                    output_scale=20.0)
    make_checkpoint(STUDENT, work / "student", seed=5)
    return work


def _run(world, work, run_dir, optim, on_step=None, seed=11):
    cfg = train_cfg("distill", teacher=str(work / "teacher"), max_steps=STEPS, optim=optim)
    cfg.model.optim.weight_decay = 0.1  # the resumed moments and step count must all matter
    tr = build_trainer(cfg, world, STUDENT, run_dir, student_ckpt=work / "student", seed=seed)
    status = tr.fit(on_step=on_step)
    losses = [h["loss"] for h in tr.history]
    params = {n: p.detach().clone() for n, p in tr.ddp.module.named_parameters()}
    tr.close()
    return status, losses, params


@pytest.mark.compat
@pytest.mark.parametrize("optim", ["distributed_fused_adam", "adam"])
def test_stop_and_resume_equals_the_uninterrupted_run(world, ckpts, tmp_path, optim):
    _, ref_losses, ref_params = _run(world, ckpts, tmp_path / "ref", optim)

    def stop(step, scalars):
        if step == STOP_AT:
            signals.request_stop()

    first, part1, _ = _run(world, ckpts, tmp_path / "run", optim, on_step=stop)
    # a different seed for the fresh student: everything that matters must come from the checkpoint
    second, part2, params = _run(world, ckpts, tmp_path / "run", optim, seed=99)
    assert (first, second) == ("preempted", "completed")
    assert len(part1) == STOP_AT and len(part2) == STEPS - STOP_AT
    assert len(set(ref_losses)) == STEPS  # the loss moves, so a wrong restore shows
    # one process on CPU: the resumed run repeats the same operations, so it is bit-identical
    assert part1 + part2 == ref_losses
    assert params.keys() == ref_params.keys()
    for name, ref in ref_params.items():
        assert torch.equal(params[name], ref), (name, (params[name] - ref).abs().max().item())


@pytest.mark.compat
def test_distopt_step_detection_matches_megatron(world, ckpts, tmp_path):
    """The version switch is read from the installed megatron-core: its own dp_reshardable state dict of a trained
    distributed optimizer fails exactly when ``distopt_bucket_step_unsupported()`` says so."""
    from nemo_minitron import mcore_compat
    from nemo_minitron.train.checkpointing import DISTOPT_SHARDING

    cfg = train_cfg("finetune", max_steps=1)
    tr = build_trainer(cfg, world, STUDENT, tmp_path / "probe", student_ckpt=ckpts / "student")
    tr.fit()
    model_sd = tr.ddp.module.sharded_state_dict(prefix="")
    try:
        tr.optimizer.sharded_state_dict(model_sd, is_loading=False,
                                        metadata={"distrib_optim_sharding_type": DISTOPT_SHARDING})
        fails = False
    except AssertionError:
        fails = True
    finally:
        tr.close()
    assert fails is mcore_compat.distopt_bucket_step_unsupported()
