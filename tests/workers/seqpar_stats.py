"""Worker: sequence-parallel importance statistics on gloo TP ranks equal the full-sequence statistics."""

import torch
import torch.distributed as dist

from nemo_minitron import runtime
from nemo_minitron.prune.importance import BatchAccumulator, cosine_stats, seq_aggregate
from nemo_minitron.prune.seqpar import local_mask, sequence_parallel_aggregate
from tests.launch import report

if __name__ == "__main__":
    env = runtime.detect_dist_env()
    ctx = runtime.init_model_parallel(tp=env.world_size, pp=1, seed=3)
    g = torch.Generator().manual_seed(0)  # the same full tensors on every rank
    seq, batch, channels = 12, 3, 5
    x = torch.randn(seq, batch, channels, generator=g) * 3 + 1
    h_out = torch.randn(seq, batch, channels, generator=g)
    mask = torch.rand(batch, seq, generator=g) > 0.3
    mask[2] = False
    mask[2, -1] = True  # sample 2 has its only valid token in the last TP block
    block = seq // ctx.tp_size
    shard = x[ctx.tp_rank * block:(ctx.tp_rank + 1) * block]
    out_shard = h_out[ctx.tp_rank * block:(ctx.tp_rank + 1) * block]
    lmask = local_mask(mask, ctx.tp_rank, ctx.tp_size)
    result = {"rank": ctx.rank}
    for how in ("mean", "l2", "var"):
        ref, ref_valid = seq_aggregate(x, mask, how)
        sp, sp_valid = sequence_parallel_aggregate(shard, lmask, how, ctx.tp_group)
        naive, _ = seq_aggregate(shard, lmask, how)  # per-shard aggregate: what ignoring SP would give
        acc_ref, acc_sp = BatchAccumulator(channels), BatchAccumulator(channels)
        acc_ref.update(ref, ref_valid)
        acc_sp.update(sp, sp_valid)
        result[how] = {
            "max_diff": (sp - ref).abs().max().item(),
            "valid_equal": bool(torch.equal(sp_valid, ref_valid)),
            "naive_diff": (naive - ref).abs().max().item(),
            "score_diff": (BatchAccumulator.finalize_packed(acc_sp.packed(), "l2")
                           - BatchAccumulator.finalize_packed(acc_ref.packed(), "l2")).abs().max().item(),
        }
    s, c = cosine_stats(shard, out_shard, lmask)
    cos = torch.stack([s, c])
    dist.all_reduce(cos, group=ctx.tp_group)
    rs, rc = cosine_stats(x, h_out, mask)
    result["cos_diff"] = (cos - torch.stack([rs, rc])).abs().max().item()
    report(result)
    runtime.shutdown()
