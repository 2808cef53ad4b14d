"""Worker: measure the peak resident memory of two KD steps at one TP x PP layout (for the planner's validation).

    torchrun --nproc-per-node=N tests/workers/plan_memory.py TP PP DISTOPT

Each rank reports the growth of its resident set from just before the models are built to the peak
(``ru_maxrss``) after two optimizer steps, next to the planner's estimate for its pipeline stage.
"""

import os
import sys

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import resource  # noqa: E402

import torch  # noqa: E402

from tests.launch import report  # noqa: E402

ARCH = dict(name="plan_check", num_layers=4, hidden_size=1024, ffn_hidden_size=4096, num_attention_heads=16,
            num_query_groups=4, vocab_size=8192, max_position_embeddings=256, precision="fp32")
MBS, GBS, SEQ = 1, 2, 64
# Resident memory a gloo/CPU megatron process adds on its first steps besides tensors (communication buffers,
# lazily created kernels): the CPU counterpart of the planner's CUDA/NCCL reserve. Measured (megatron-core 0.16.1)
# with glibc's allocator pinned by MALLOC_ENV below, which makes the resident peak the tensors' peak and the same
# from run to run (with glibc's defaults two ranks of one TP=2 run differed by ~90 MiB).
CPU_RUNTIME_RESERVE = 100 * 2**20
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2"}


def layout(tp: int, pp: int, distopt: bool):
    from nemo_minitron.plan.memory import Layout

    return Layout(tp=tp, pp=pp, dp=1, distributed_optimizer=distopt, flash_attention=False, micro_batch_size=MBS,
                  global_batch_size=GBS, seq_length=SEQ, param_bytes=4)


def main() -> None:
    import megatron.core.distributed  # noqa: F401  (imported before the baseline: code is not what we measure)
    import megatron.core.optimizer  # noqa: F401
    import megatron.core.pipeline_parallel  # noqa: F401
    import psutil

    from nemo_minitron import runtime
    from nemo_minitron.config.model import ModelConfig
    from nemo_minitron.distill.objective import build_loss
    from nemo_minitron.distill.teacher import freeze
    from nemo_minitron.models.builder import build_gpt_model
    from nemo_minitron.plan.memory import stage_memory
    from nemo_minitron.train.trainer import Trainer
    from tests.workers.distill_common import SyntheticData, train_cfg

    torch.set_num_threads(1)
    tp, pp, distopt = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    ctx = runtime.init_model_parallel(tp, pp, seed=3)
    cfg = ModelConfig(**ARCH, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    torch.distributed.barrier()
    base = psutil.Process().memory_info().rss
    teacher = freeze(build_gpt_model(cfg))
    student = build_gpt_model(cfg)
    tcfg = train_cfg("distill", teacher="unused", max_steps=2, mbs=MBS, gbs=GBS, seq=SEQ,
                     optim="distributed_fused_adam" if distopt else "fused_adam")
    data = SyntheticData(cfg.vocab_size, SEQ, MBS, ctx.dp_rank, ctx.dp_size)
    trainer = Trainer(tcfg, ctx, student, cfg, data, "/tmp/unused_plan_memory",
                      build_loss(tcfg, ctx, student, cfg, teacher, cfg))
    it = data.train_iterator(0)
    for _ in range(2):
        trainer.train_step([next(it) for _ in range(trainer.num_micro)])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    planned = stage_memory(cfg, cfg, layout(tp, pp, distopt), ctx.pp_rank, CPU_RUNTIME_RESERVE).total
    report({"rank": ctx.rank, "stage": ctx.pp_rank, "tp": tp, "pp": pp, "distopt": distopt,
            "measured": peak - base, "planned": planned})
    runtime.shutdown()


if __name__ == "__main__":
    main()
