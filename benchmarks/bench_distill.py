"""KD overhead and memory, measured side by side in one run.

    OMP_NUM_THREADS=2 python benchmarks/bench_distill.py [--steps 6] [--hidden 256] [--seq 256]
    OMP_NUM_THREADS=2 python benchmarks/bench_distill.py --preset smollm2   # SmolLM2-135M teacher, pruned student
    OMP_NUM_THREADS=2 python benchmarks/bench_distill.py --tp 2             # TP=2: two ranks (gloo), 1 thread each

Prints, for the same student, teacher and batches:
  * KD step time / (student LM-loss training step + teacher forward)   (goal <= 1.05)
  * peak resident-memory growth of a KD run and of an LM-only run (separate child processes, same sizes; TP=1)
Timings alternate KD / LM / teacher-forward repetitions so drift on a shared CPU hits all of them alike;
medians are reported.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _models(args):
    student, teacher = _shapes(args)
    return (student.replace(tensor_model_parallel_size=args.tp), teacher.replace(tensor_model_parallel_size=args.tp))


def _shapes(args):
    from tests.workers.distill_common import tiny

    if args.preset == "smollm2":  # SmolLM2-135M's shape and a width-pruned student (random weights)
        # 9 heads / 3 groups do not split over TP=2: there the same widths get 12 / 4 heads of 48 channels
        heads, groups = (9, 3) if 3 % args.tp == 0 else (12, 4)
        teacher = tiny(num_layers=30, hidden_size=576, ffn_hidden_size=1536, num_attention_heads=heads,
                       num_query_groups=groups, vocab_size=49152, max_position_embeddings=max(2048, args.seq))
        student = teacher.replace(hidden_size=384, ffn_hidden_size=1024, num_attention_heads=heads * 2 // 3,
                                  num_query_groups=groups)
        return student, teacher
    student = tiny(num_layers=args.student_layers, hidden_size=args.hidden, ffn_hidden_size=4 * args.hidden,
                   num_attention_heads=8, num_query_groups=4, vocab_size=args.vocab, max_position_embeddings=args.seq)
    teacher = tiny(num_layers=2 * args.student_layers, hidden_size=int(1.5 * args.hidden),
                   ffn_hidden_size=6 * args.hidden, num_attention_heads=12, num_query_groups=4, vocab_size=args.vocab,
                   max_position_embeddings=args.seq)
    return student, teacher


def _trainer(args, mode, work, ctx):
    from tests.workers.distill_common import build_trainer, train_cfg

    student, _ = _models(args)
    cfg = train_cfg(mode, teacher=str(work / "teacher") if mode == "distill" else None, max_steps=10 ** 6,
                    mbs=args.mbs, gbs=args.mbs, seq=args.seq, optim="adam")
    return build_trainer(cfg, ctx, student, work / f"run_{mode}", student_ckpt=work / "student")


def child(args):
    """One mode in a fresh process: report peak RSS growth over the baseline after imports/world start."""
    import psutil
    import torch

    from nemo_minitron import runtime

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    ctx = runtime.init_model_parallel(1, 1, seed=1)
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():  # RSS sampled every 2 ms: the peak between samples is missed, equally in both modes
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    work = Path(args.work)
    tr = _trainer(args, args.child, work, ctx)
    it = tr.data.train_iterator(0)
    for _ in range(3):
        tr.train_step([next(it)])
    done.set()
    thread.join()
    print("RESULT " + json.dumps({"peak_mib": (peak[0] - base) / 2**20}), flush=True)


def _relaunch_tensor_parallel(args) -> int:
    """Run this benchmark as ``args.tp`` torchrun ranks sharing the machine's threads; return the exit code."""
    from tests.launch import kill_job, torchrun_command

    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    cmd, env = torchrun_command(Path(__file__), args.tp, sys.argv[1:],
                                env={"OMP_NUM_THREADS": str(max(1, threads // args.tp))})
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True)
    try:
        return proc.wait()
    except BaseException:
        kill_job(proc)
        raise


def main(args):
    import torch
    import torch.distributed as dist

    from nemo_minitron import runtime
    from tests.workers.distill_common import make_checkpoint

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    ctx = runtime.init_model_parallel(args.tp, 1, seed=1)
    rank0 = ctx.rank == 0
    work = Path(tempfile.mkdtemp(prefix="bench_distill_")) if rank0 else None
    if args.tp > 1:  # one work directory for all ranks
        box = [str(work) if rank0 else None]
        dist.broadcast_object_list(box, src=0)
        work = Path(box[0])
    student_cfg, teacher_cfg = _models(args)
    make_checkpoint(teacher_cfg, work / "teacher", seed=3, output_scale=10.0)
    make_checkpoint(student_cfg, work / "student", seed=5)
    kd, lm = _trainer(args, "distill", work, ctx), _trainer(args, "finetune", work, ctx)
    teacher = kd.stage.teacher
    batches = [next(kd.data.train_iterator(i * args.mbs)) for i in range(args.steps + 2)]

    def teacher_fwd(b):
        with torch.no_grad():
            teacher(b["tokens"], b["position_ids"], None)

    times = {"kd": [], "lm": [], "teacher": []}
    for i, b in enumerate(batches):
        for name, fn in (("kd", lambda: kd.train_step([b])), ("lm", lambda: lm.train_step([b])),
                         ("teacher", lambda: teacher_fwd(b))):
            if args.tp > 1:
                dist.barrier()
            t0 = time.perf_counter()
            fn()
            if args.tp > 1:
                dist.barrier()
            if i >= 2:  # warm-up
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    ratio = med["kd"] / (med["lm"] + med["teacher"])
    ratio_best = best["kd"] / (best["lm"] + best["teacher"])  # least disturbed by other load on a shared CPU
    mem = {"finetune": float("nan"), "distill": float("nan")}
    for mode in ("finetune", "distill") if args.tp == 1 else ():
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--work", str(work), *sys.argv[1:]],
                             capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        mem[mode] = json.loads(line[0][7:])["peak_mib"] if line else float("nan")
    tokens = args.mbs * args.seq
    if args.tp > 1:
        dist.barrier()
    if not rank0:
        runtime.shutdown()
        return
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nTP={args.tp}: student {student_cfg.num_layers}x{student_cfg.hidden_size}, teacher {teacher_cfg.num_layers}x"
          f"{teacher_cfg.hidden_size}, vocab {student_cfg.vocab_size}, {args.mbs}x{args.seq} tokens/step, "
          f"{torch.get_num_threads()} threads, {args.steps} timed steps (median)")
    print(f"{'LM-only student step':34s} {med['lm'] * 1e3:9.1f} ms  ({tokens / med['lm']:8.0f} tokens/s)")
    print(f"{'teacher forward':34s} {med['teacher'] * 1e3:9.1f} ms")
    print(f"{'KD step (student + teacher + KL)':34s} {med['kd'] * 1e3:9.1f} ms  ({tokens / med['kd']:8.0f} tokens/s)")
    print(f"{'KD / (student step + teacher fwd)':34s} {ratio:9.3f}     (goal <= 1.05; medians)")
    print(f"{'  same, fastest repetitions':34s} {ratio_best:9.3f}")
    print(f"{'peak RSS growth, LM-only run':34s} {mem['finetune']:9.1f} MiB")
    print(f"{'peak RSS growth, KD run':34s} {mem['distill']:9.1f} MiB  (+{mem['distill'] - mem['finetune']:.1f} MiB "
          "for the teacher)")
    runtime.shutdown()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--student-layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--mbs", type=int, default=4)
    p.add_argument("--preset", choices=["default", "smollm2"], default="default",
                   help="smollm2: SmolLM2-135M-shaped teacher (30x576, vocab 49152) and a 30x384 student")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (relaunched with torchrun; gloo)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a)
    elif a.tp > 1 and "RANK" not in os.environ:
        sys.exit(_relaunch_tensor_parallel(a))
    else:
        main(a)
