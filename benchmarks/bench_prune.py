"""Pruning benchmarks, measured side by side in one run.

1. Calibration overhead: the hooked calibration pass divided by a plain forward over the same batches
   (goal ≤ 1.05). Runs alternate plain / hooked and keep the best of ``--repeats`` each.
2. End-to-end prune time (``--e2e``): the whole recipe on a checkpoint (e.g. SmolLM2-135M) with a 50% MLP target.
3. Peak memory per process (``--memory``): the same prune (MLP halved, 20 → 16 layers) of a random ~310M-parameter
   fp32 model at TP=1, TP=2 and PP=2, side by side. Surgery, validation and saving run at the layout, so the
   sharded peak over the full model size should be close to 1/TP (1/PP). The prunes run with glibc's
   ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB (``--glibc-default`` leaves it alone) so that a freed tensor goes
   back to the OS and the peak RSS tracks the live tensors, not heap the allocator kept after a free.

    python benchmarks/bench_prune.py                                  # SmolLM2-135M-shaped random model
    python benchmarks/bench_prune.py --ckpt ckpt/smollm2-135m --e2e --calib-data data/wikipedia/wiki.train.raw
    python benchmarks/bench_prune.py --memory                         # TP=1 / TP=2 / PP=2 peak memory
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")

import torch  # noqa: E402

from nemo_minitron import runtime  # noqa: E402
from nemo_minitron.config.model import ModelConfig  # noqa: E402
from nemo_minitron.models.builder import build_gpt_model  # noqa: E402
from nemo_minitron.prune.calibrate import TokenBatch, run_forward  # noqa: E402
from nemo_minitron.prune.hooks import ImportanceCollector  # noqa: E402

SMOLLM2 = ModelConfig(name="smollm2-135m-shape", num_layers=30, hidden_size=576, ffn_hidden_size=1536,
                      num_attention_heads=9, num_query_groups=3, kv_channels=64, vocab_size=49152,
                      rotary_base=100000.0, share_embeddings_and_output_weights=True)


def overhead(args) -> None:
    ctx = runtime.init_model_parallel(1, 1, seed=1)
    if args.ckpt:
        from nemo_minitron.checkpoint import load_checkpoint, load_model_config

        cfg = load_model_config(args.ckpt)
        model = build_gpt_model(cfg)
        load_checkpoint(model, cfg, args.ckpt)
    else:
        cfg = SMOLLM2
        model = build_gpt_model(cfg)
    g = torch.Generator().manual_seed(0)
    batch = TokenBatch(torch.randint(0, cfg.vocab_size, (args.samples, args.seq), generator=g),
                       torch.ones(args.samples, args.seq, dtype=torch.bool))
    run_forward(model, batch.slice(0, args.mbs), ctx, args.mbs, progress=False)  # warm-up
    plain, hooked, inside = [], [], []
    for _ in range(args.repeats):
        plain.append(run_forward(model, batch, ctx, args.mbs, progress=False))
        collector = ImportanceCollector(model, ctx, cfg.num_attention_heads, cfg.query_groups)
        hooked.append(run_forward(model, batch, ctx, args.mbs, collector=collector, progress=False))
        collector.remove()
        collector.finalize()
        inside.append(collector.hook_seconds / hooked[-1])
    tokens = args.samples * args.seq
    print(f"model {cfg.name}: {args.samples} samples x {args.seq} tokens, micro-batch {args.mbs}, "
          f"threads {torch.get_num_threads()}")
    print(f"plain forward      best {min(plain):8.2f} s  ({tokens / min(plain):8.0f} tokens/s)  runs {plain}")
    print(f"calibration pass   best {min(hooked):8.2f} s  ({tokens / min(hooked):8.0f} tokens/s)  runs {hooked}")
    print(f"calibration / plain forward = {min(hooked) / min(plain):.3f}  (goal <= 1.05)")
    # The same ratio from inside each hooked run (insensitive to load from other processes):
    # calibration / forward = total / (total - time spent in hooks).
    share = min(inside)
    print(f"time inside hooks: {share:.2%} of the calibration pass -> calibration / plain forward = "
          f"{1 / (1 - share):.3f} (per run: {[round(1 / (1 - x), 3) for x in inside]})")


def end_to_end(args) -> None:
    from nemo_minitron.config.prune import ExportConfig, MegatronPruneConfig, PruneConfig
    from nemo_minitron.prune.pipeline import run_prune

    out = tempfile.mkdtemp(prefix="bench_prune_")
    try:
        job = MegatronPruneConfig(model=ModelConfig(restore_from_path=args.ckpt),
                                  prune=PruneConfig(ffn_hidden_size=args.ffn, calib_data=args.calib_data,
                                                    num_calib_size=args.samples, calib_seq_length=args.seq,
                                                    num_val_samples=args.val, plot=False),
                                  export=ExportConfig(save_path=os.path.join(out, "pruned")))
        t0 = time.perf_counter()
        rep = run_prune(job)
        total = time.perf_counter() - t0
        v = rep["validation"]
        print(f"end-to-end prune (ffn -> {args.ffn}, {args.samples} calibration samples x {args.seq}): {total:.1f} s "
              f"(calibration {rep['timing_seconds']['calibration']:.1f} s); "
              f"val ppl {v['perplexity_before']:.2f} -> {v['perplexity_after']:.2f}")
    finally:
        shutil.rmtree(out, ignore_errors=True)


MMAP_THRESHOLD = "131072"
"""glibc's mmap threshold (bytes) for the memory comparisons: freed tensors go back to the OS at once."""
MEM_MODEL = ModelConfig(name="mem-310m", num_layers=20, hidden_size=1024, ffn_hidden_size=4096, num_attention_heads=16,
                        num_query_groups=4, vocab_size=8192, max_position_embeddings=512, precision="fp32")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_worker(root: str, tp: int, pp: int) -> None:
    """Under torchrun: one prune at TP x PP; rank 0 writes every rank's peak memory to ROOT/mem_<tp>x<pp>.json."""
    import torch.distributed as dist

    from nemo_minitron.config.prune import ExportConfig, MegatronPruneConfig, PruneConfig
    from nemo_minitron.prune.pipeline import run_prune

    torch.set_num_threads(1)
    runtime.init_distributed()
    baseline = _rss_mib()
    job = MegatronPruneConfig(
        model=ModelConfig(restore_from_path=os.path.join(root, "ckpt"), tensor_model_parallel_size=tp,
                          pipeline_model_parallel_size=pp, precision="fp32"),
        prune=PruneConfig(calib_data=os.path.join(root, "calib.pt"), num_calib_size=4, calib_seq_length=64,
                          num_val_samples=4, calib_batch_size=2, ffn_hidden_size=2048, num_layers=16,
                          depth_method="cosine", plot=False),
        export=ExportConfig(save_path=os.path.join(root, f"out_{tp}x{pp}")))
    t0 = time.perf_counter()
    rep = run_prune(job)
    mine = {"rank": dist.get_rank(), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "baseline_rss_mib": baseline, "seconds": time.perf_counter() - t0,
            "sharded": rep["layout"]["sharded_surgery"],
            "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    if dist.get_rank() == 0:
        Path(root, f"mem_{tp}x{pp}.json").write_text(json.dumps(every))
    runtime.shutdown()


def memory(args) -> None:
    from nemo_minitron.models.params import count_parameters

    root = tempfile.mkdtemp(prefix="bench_prune_mem_")
    try:
        # the checkpoint is written by a child so that this process holds no model while the prunes run
        subprocess.run([sys.executable, __file__, "--make-memory-ckpt", root], check=True)
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, MEM_MODEL.vocab_size, (8, 64), generator=g)
        torch.save({"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool)}, os.path.join(root, "calib.pt"))
        full_mib = count_parameters(MEM_MODEL).total * 4 / 2**20
        rows = []
        for tp, pp in ((1, 1), (2, 1), (1, 2)):
            n = tp * pp
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}", "--nnodes=1",
                   f"--master-port={runtime.free_port()}", "--master-addr=127.0.0.1", "--max-restarts=0",
                   __file__, "--memory-worker", root, str(tp), str(pp)]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
            if not args.glibc_default:
                env.setdefault("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            rows.append((tp, pp, json.loads(Path(root, f"mem_{tp}x{pp}.json").read_text())))
        print(f"model {MEM_MODEL.name}: {count_parameters(MEM_MODEL).total / 1e6:.1f}M parameters, fp32 weights "
              f"{full_mib:.0f} MiB; prune: ffn 4096 -> 2048, 20 -> 16 layers (cosine); peak RSS per process "
              f"(MALLOC_MMAP_THRESHOLD_={'default' if args.glibc_default else os.environ.get('MALLOC_MMAP_THRESHOLD_', MMAP_THRESHOLD)})")
        ref = max(r["peak_rss_mib"] - r["baseline_rss_mib"] for r in rows[0][2])
        ref_raw = max(r["peak_rss_mib"] for r in rows[0][2])
        print(f"{'layout':8} {'rank':>4} {'peak MiB':>9} {'start MiB':>9} {'peak-start':>10} {'/full':>6} "
              f"{'vs TP=1':>7} {'raw vs TP=1':>11} {'sharded':>7} {'seconds':>7}")
        for tp, pp, ranks in rows:
            for r in ranks:
                grown = r["peak_rss_mib"] - r["baseline_rss_mib"]
                print(f"{f'TP{tp}xPP{pp}':8} {r['rank']:>4} {r['peak_rss_mib']:9.0f} {r['baseline_rss_mib']:9.0f} "
                      f"{grown:10.0f} {grown / full_mib:6.2f} {grown / ref:7.2f} {r['peak_rss_mib'] / ref_raw:11.2f} "
                      f"{str(r['sharded']):>7} {r['seconds']:7.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def make_memory_ckpt(root: str) -> None:
    from nemo_minitron.checkpoint import save_checkpoint

    runtime.init_model_parallel(1, 1, seed=1)
    save_checkpoint(build_gpt_model(MEM_MODEL), MEM_MODEL, os.path.join(root, "ckpt"))
    runtime.shutdown()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-worker":
        memory_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        raise SystemExit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--make-memory-ckpt":
        make_memory_ckpt(sys.argv[2])
        raise SystemExit(0)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="megatron checkpoint (default: random SmolLM2-135M-shaped model)")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--mbs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--e2e", action="store_true", help="also time the whole recipe (needs --ckpt, --calib-data)")
    ap.add_argument("--calib-data")
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--val", type=int, default=16)
    ap.add_argument("--memory", action="store_true", help="only the TP=1 / TP=2 / PP=2 peak-memory comparison")
    ap.add_argument("--glibc-default", action="store_true", help="--memory: keep glibc's dynamic mmap threshold")
    args = ap.parse_args()
    if args.memory:
        memory(args)
        raise SystemExit(0)
    overhead(args)
    if args.e2e:
        if not (args.ckpt and args.calib_data):
            raise SystemExit("--e2e needs --ckpt and --calib-data")
        end_to_end(args)
