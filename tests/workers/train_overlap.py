"""Worker (2 processes, DP=2, distributed optimizer): KD steps with the DDP overlaps on equal them off.

argv: WORKDIR (holds teacher/ and student/ checkpoints made by the parent test). For each setting the worker
reports the losses, the validation loss, the saved train-state checkpoint's weights (read back by every rank)
and, with the parameter all-gather overlapped, how far each rank's weights were from the synchronised ones
right after the last optimizer step (the shard owned by the other rank is stale until the next forward).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nemo_minitron import runtime  # noqa: E402
from tests.launch import report  # noqa: E402
from tests.workers.distill_common import build_trainer, tiny, train_cfg  # noqa: E402

STUDENT = tiny(num_layers=2)
SETTINGS = {"off": (False, False), "grad": (True, False), "both": (True, True)}


def run(ctx, work: Path, tag: str, grad: bool, param: bool) -> dict:
    cfg = train_cfg("distill", teacher=str(work / "teacher"), max_steps=3)
    cfg.model.optim.overlap_grad_sync, cfg.model.optim.overlap_param_sync = grad, param
    cfg.trainer.val_check_interval = 3
    cfg.trainer.limit_val_batches = 1
    tr = build_trainer(cfg, ctx, STUDENT, work / f"run_{tag}", student_ckpt=work / "student")
    ddp_cfg = tr.ddp.ddp_config
    stale = {}

    original_validate = tr.validate

    def validate_after_looking():  # the last step's weights as the rank holds them, then after validate's sync
        before = [p.detach().clone() for p in tr.ddp.module.parameters()]
        out = original_validate()
        stale["max_abs_change"] = max(float((b - p).abs().max()) for b, p in zip(before, tr.ddp.module.parameters()))
        return out

    tr.validate = validate_after_looking
    status = tr.fit()
    out = {"status": status, "losses": [h["loss"] for h in tr.history],
           "val_loss": tr.val_history[-1]["val_loss"] if tr.val_history else None,
           "ddp": [ddp_cfg.overlap_grad_reduce, ddp_cfg.overlap_param_gather], **stale}
    tr.close()
    return out


def saved_weights(path: Path) -> dict:
    from nemo_minitron.checkpoint import load_checkpoint
    from nemo_minitron.models.builder import build_gpt_model

    model = build_gpt_model(STUDENT)
    load_checkpoint(model, STUDENT, path)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


if __name__ == "__main__":
    work = Path(sys.argv[1])
    ctx = runtime.init_model_parallel(1, 1, seed=1)
    results = {tag: run(ctx, work, tag, *flags) for tag, flags in SETTINGS.items()}
    ref = saved_weights(work / "run_off" / "checkpoints" / "step_0000003" / "model")  # collective loads
    for tag in SETTINGS:
        got = saved_weights(work / f"run_{tag}" / "checkpoints" / "step_0000003" / "model")
        results[tag]["saved_vs_off"] = max(float((got[n] - ref[n]).abs().max()) for n in ref)
    if ctx.rank == 0:
        report(results)
    runtime.shutdown()
