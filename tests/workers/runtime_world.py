"""Worker: start the world from whatever launcher environment is present, all-reduce, report."""

import torch
import torch.distributed as dist

from nemo_minitron import runtime
from tests.launch import report

if __name__ == "__main__":
    env = runtime.detect_dist_env()
    ctx = runtime.init_model_parallel(tp=env.world_size, pp=1, seed=3)
    t = torch.tensor([float(ctx.rank + 1)])
    dist.all_reduce(t, group=ctx.tp_group)
    report({"launcher": env.launcher, "rank": ctx.rank, "world": ctx.world_size, "tp_rank": ctx.tp_rank,
            "local_rank": ctx.local_rank, "sum": t.item()})
    runtime.shutdown()
