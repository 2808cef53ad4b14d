"""Pruning benchmarks, measured side by side in one run.

1. Calibration overhead: the hooked calibration pass divided by a plain forward over the same batches
   (goal ≤ 1.05). Runs alternate plain / hooked and keep the best of ``--repeats`` each.
2. End-to-end prune time (``--e2e``): the whole recipe on a checkpoint (e.g. SmolLM2-135M) with a 50% MLP target.

    python benchmarks/bench_prune.py                                  # SmolLM2-135M-shaped random model
    python benchmarks/bench_prune.py --ckpt ckpt/smollm2-135m --e2e --calib-data data/wikipedia/wiki.train.raw
"""

import argparse
import os
import shutil
import tempfile
import time

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


if __name__ == "__main__":
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
    args = ap.parse_args()
    overhead(args)
    if args.e2e:
        if not (args.ckpt and args.calib_data):
            raise SystemExit("--e2e needs --ckpt and --calib-data")
        end_to_end(args)
