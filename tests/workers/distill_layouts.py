"""Worker (2 processes): vocab-parallel KL at TP=2, KD loss trajectories at TP=2 / PP=2 / DP=2, kill-and-resume.

argv: WORKDIR (holds teacher/ and student/ checkpoints made by the parent test).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nemo_minitron import runtime  # noqa: E402
from nemo_minitron.distill import losses  # noqa: E402
from nemo_minitron.train import signals  # noqa: E402
from tests.launch import report  # noqa: E402
from tests.workers.distill_common import build_trainer, tiny, train_cfg  # noqa: E402

STUDENT = tiny(num_layers=2)
PAIRS = [["decoder.final_layernorm", "decoder.final_layernorm"]]


def kl_checks(ctx) -> dict:
    g = torch.Generator().manual_seed(0)
    full_s = torch.randn(2, 5, 64, generator=g) * 3
    full_t = torch.randn(2, 5, 64, generator=g) * 3
    w = torch.rand(2, 5, generator=g)
    shard = 64 // ctx.tp_size
    lo, hi = ctx.tp_rank * shard, (ctx.tp_rank + 1) * shard
    out = {}
    cases = {"forward": {}, "reverse_t2": dict(reverse=True, temperature=2.0, scale_by_t2=True),
             "forward_chunks_t": dict(temperature=0.7), "reverse_chunks": dict(reverse=True),
             "topk": dict(top_k=5), "topk_reverse_t": dict(top_k=7, reverse=True, temperature=0.7)}
    for name, kw in cases.items():
        chunks = {"chunk_elements": 3 * shard} if "chunks" in name else {}  # 4 chunks of 3 rows (the last: 1)
        s_dense = full_s.clone().requires_grad_(True)
        ref = losses.logit_kl(s_dense, full_t, **kw)
        (ref * w).sum().backward()
        s_local = full_s[..., lo:hi].clone().requires_grad_(True)
        val = losses.vocab_parallel_logit_kl(s_local, full_t[..., lo:hi], ctx.tp_group, **kw, **chunks)
        (val * w).sum().backward()
        out[name] = {"loss_diff": float((val - ref).abs().max()), "grad_diff":
                     float((s_local.grad - s_dense.grad[..., lo:hi]).abs().max()), "loss": float(ref.sum()),
                     "grad_max": float(s_dense.grad.abs().max())}
    return out


def kd_run(ctx, work: Path, tag: str, steps: int = 3, optim: str = "distributed_fused_adam", **kw):
    student = STUDENT.replace(tensor_model_parallel_size=ctx.tp_size, pipeline_model_parallel_size=ctx.pp_size)
    cfg = train_cfg("distill", teacher=str(work / "teacher"), max_steps=steps, optim=optim, **kw)
    tr = build_trainer(cfg, ctx, student, work / f"run_{tag}", student_ckpt=work / "student")
    status = tr.fit()
    tr.close()
    return status, [h["loss"] for h in tr.history], [h["grad_norm"] for h in tr.history]


def resume_run(ctx, work: Path, tag: str, steps: int = 4, kill_at: int = 2, optim: str = "distributed_fused_adam"):
    student = STUDENT.replace(tensor_model_parallel_size=ctx.tp_size, pipeline_model_parallel_size=ctx.pp_size)
    cfg = train_cfg("distill", teacher=str(work / "teacher"), max_steps=steps, intermediate_pairs=PAIRS, optim=optim)

    def kill(step, scalars):
        if step == kill_at:
            signals.request_stop()

    tr = build_trainer(cfg, ctx, student, work / f"run_{tag}", student_ckpt=work / "student")
    first = tr.fit(on_step=kill)
    part1 = [h["loss"] for h in tr.history]
    tr.close()
    tr = build_trainer(cfg, ctx, student, work / f"run_{tag}", student_ckpt=work / "student", seed=99)
    second = tr.fit()
    part2 = [h["loss"] for h in tr.history]
    tr.close()
    return {"status": [first, second], "losses": part1 + part2}


if __name__ == "__main__":
    work = Path(sys.argv[1])
    results = {}
    ctx = runtime.init_model_parallel(2, 1, seed=1)
    results["kl_tp2"] = kl_checks(ctx)
    results["tp2"] = kd_run(ctx, work, "tp2", intermediate_pairs=PAIRS)
    results["tp2_topk_t"] = kd_run(ctx, work, "tp2_topk", top_k=20, temperature=2.0, scale_by_t2=True,
                                   skip_lm_loss=False)
    ctx = runtime.init_model_parallel(1, 2, seed=1)
    results["pp2"] = kd_run(ctx, work, "pp2", intermediate_pairs=PAIRS)
    results["pp2_adam"] = kd_run(ctx, work, "pp2_adam", optim="adam")
    results["pp2_resume"] = resume_run(ctx, work, "pp2_resume", optim="adam")
    ctx = runtime.init_model_parallel(1, 1, seed=1)
    results["dp2"] = kd_run(ctx, work, "dp2", intermediate_pairs=PAIRS)
    results["dp2_resume"] = resume_run(ctx, work, "dp2_resume")
    if ctx.rank == 0:
        report(results)
    runtime.shutdown()
