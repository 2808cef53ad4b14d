"""Run the GPU check rows once, each guarded, and always print the table (``bash scripts/gpu_check.sh``).

    python -m tests.gpu.check [--dry-run] [--out DIR] [--budget-s 420]

``--dry-run`` runs nothing on a device: it imports every module the rows need, reports what the machine has
(CUDA devices, Transformer Engine, megatron-core) and prints the plan, i.e. the rows that would run.
Rows that would overrun ``--budget-s`` are skipped (and say so), so one run always finishes with a table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from tests.gpu import rows
from tests.gpu.rows import Row

MODULES = (
    "megatron.core", "megatron.core.dist_checkpointing", "megatron.core.optimizer", "megatron.core.distributed",
    "megatron.core.pipeline_parallel", "megatron.core.models.gpt", "hydra", "omegaconf", "yaml", "safetensors",
    "psutil", "tqdm", "nemo_minitron.runtime", "nemo_minitron.models.builder", "nemo_minitron.models.forward",
    "nemo_minitron.checkpoint", "nemo_minitron.prune.pipeline", "nemo_minitron.distill.teacher",
    "nemo_minitron.train.trainer", "nemo_minitron.plan.flops", "tests.workers.distill_common", "tests.launch",
)
"""Everything the rows import; the dry run imports each one."""


def plan(have_te: bool, n_gpus: int) -> list[tuple[str, float, Callable[[Path], list[Row] | Row] | str]]:
    """(name, estimated seconds on one H100, function of the reference dir or a skip reason) per row group."""
    p: list = [
        ("logits local", 20, lambda r: rows.row_logits(r, "local")),
        ("prune TP=1", 40, rows.row_prune),
        ("KD 20 steps local", 30, lambda r: rows.row_kd(r, 20, "local")),
    ]
    for pair in rows.PAIRS:
        for fusions, recompute in ((False, None), (True, None), (True, "selective"), (True, "full")):
            p.append((f"speed {pair} fusions={fusions} recompute={recompute}", 25,
                      lambda r, a=pair, f=fusions, c=recompute: rows.row_speed(a, f, c, "local")))
    te_reason = "skipped: no Transformer Engine"
    p += [
        ("logits transformer_engine", 20, (lambda r: rows.row_logits(r, "transformer_engine")) if have_te else te_reason),
        ("TE vs local", 15, rows.row_te_vs_local if have_te else te_reason),
        ("KD 20 steps transformer_engine", 30, (lambda r: rows.row_kd(r, 20, "transformer_engine")) if have_te
         else te_reason),
    ]
    for pair in rows.PAIRS:
        p.append((f"speed {pair} TE fusions", 25, (lambda r, a=pair: rows.row_speed(a, True, None, "transformer_engine"))
                  if have_te else te_reason))
    tp_reason = f"skipped: needs 2+ GPUs (found {n_gpus})"
    p += [("logits TP=2", 40, (lambda r: rows.row_tp2(r, False)) if n_gpus >= 2 else tp_reason),
          ("logits TP=2 + sequence parallel", 40, (lambda r: rows.row_tp2(r, True)) if n_gpus >= 2 else tp_reason)]
    return p


def print_table(table: list[Row], header: str) -> None:
    """The result table, fixed-width."""
    w = max([len(r.name) for r in table] + [20])
    v = max([len(r.value) for r in table] + [10])
    print(f"\n{header}")
    print(f"{'row':<{w}}  {'status':<6}  {'value':<{v}}  {'s':>5}  detail")
    print("-" * (w + v + 30))
    for r in table:
        print(f"{r.name:<{w}}  {r.status:<6}  {r.value:<{v}}  {r.seconds:5.0f}  {r.detail}")
    counts = {s: sum(r.status == s for r in table) for s in ("PASS", "FAIL", "ERROR", "SKIP", "INFO")}
    print("-" * (w + v + 30))
    print("  ".join(f"{k} {n}" for k, n in counts.items()))


def environment() -> str:
    """One line: torch, CUDA devices, megatron-core, Transformer Engine."""
    from nemo_minitron.mcore_compat import have_transformer_engine, mcore_version

    devs = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}), devices: {devs or 'none'}, megatron-core "
            f"{'.'.join(map(str, mcore_version()))}, Transformer Engine: {have_transformer_engine()}")


def main(argv: list[str] | None = None) -> int:
    """Run (or with --dry-run, plan) the GPU check; exit 1 if a row failed or raised."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--out", default=None, help="folder for the reference, results.json (default: a temp dir)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip rows that would end after this many seconds")
    args = ap.parse_args(argv)
    missing = []
    for mod in MODULES:
        try:
            importlib.import_module(mod)
        except Exception as exc:  # report every missing import at once
            missing.append(f"{mod}: {type(exc).__name__}: {exc}")
    if missing:
        print("[gpu_check] imports failed:\n  " + "\n  ".join(missing))
        return 2
    from nemo_minitron.mcore_compat import have_transformer_engine

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    header = f"GPU check: {environment()}"
    steps = plan(have_transformer_engine(), n_gpus)
    if args.dry_run:
        table = [Row(name, "SKIP" if isinstance(fn, str) else "PLAN", f"~{est:.0f} s",
                     fn if isinstance(fn, str) else "would run") for name, est, fn in steps]
        print_table(table, header + " (dry run: nothing executed)")
        print(f"[gpu_check] dry run ok: {len(MODULES)} imports, {sum(not isinstance(s[2], str) for s in steps)} rows "
              f"planned, ~{sum(s[1] for s in steps if not isinstance(s[2], str)):.0f} s estimated on one H100")
        return 0
    out = Path(args.out or tempfile.mkdtemp(prefix="nm_gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    table: list[Row] = []
    start = time.perf_counter()
    try:
        if n_gpus == 0:
            table.append(Row("CUDA device", "SKIP", "", "skipped: no CUDA device; nothing to check"))
            return 0
        t0 = time.perf_counter()
        try:
            rows.ensure_reference(out / "reference")
            table.append(Row("CPU fp32 reference (checkpoint, logits, prune)", "PASS", "",
                             str(out / "reference"), time.perf_counter() - t0))
        except Exception as exc:
            table.append(Row("CPU fp32 reference", "ERROR", "", f"{type(exc).__name__}: {str(exc)[-300:]}",
                             time.perf_counter() - t0))
            return 1
        for name, est, fn in steps:
            if isinstance(fn, str):
                table.append(Row(name, "SKIP", "", fn))
                continue
            if time.perf_counter() - start + est > args.budget_s:
                table.append(Row(name, "SKIP", "", f"skipped: time budget {args.budget_s:.0f} s reached"))
                continue
            t0 = time.perf_counter()
            try:
                got = fn(out / "reference")
                for r in got if isinstance(got, list) else [got]:
                    r.seconds = (time.perf_counter() - t0) / (len(got) if isinstance(got, list) else 1)
                    table.append(r)
            except Exception as exc:
                tb = traceback.format_exc(limit=-2).strip().splitlines()
                table.append(Row(name, "ERROR", "", f"{type(exc).__name__}: {str(exc)[:200]} | {tb[-3][:160]}",
                                 time.perf_counter() - t0))
            finally:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        return 1 if any(r.status in ("FAIL", "ERROR") for r in table) else 0
    finally:
        print_table(table, header + f" ({time.perf_counter() - start:.0f} s)")
        (out / "results.json").write_text(json.dumps([r.__dict__ for r in table], indent=1))
        print(f"[gpu_check] results: {out / 'results.json'}")


if __name__ == "__main__":
    sys.exit(main())
