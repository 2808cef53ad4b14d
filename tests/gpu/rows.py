"""The checks of the GPU tier, one function per table row (used by ``tests/gpu/test_gpu.py`` and ``check.py``).

Every row returns a :class:`Row`. The fp32 CPU reference (checkpoint, logits, prune) is made by
``python -m tests.gpu.rows reference OUT`` in a separate process with CUDA hidden, so the GPU rows compare
against megatron-core on the CPU with the very same weights and data.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parents[2]

# The reference model: small enough for a CPU fp32 run of a few seconds, wide enough for bf16 to matter.
REF_ARCH = dict(name="gpucheck", num_layers=4, hidden_size=256, ffn_hidden_size=768, num_attention_heads=8,
                num_query_groups=4, vocab_size=4096, max_position_embeddings=512)
PRUNE_TARGETS = dict(ffn_hidden_size=384, num_attention_heads=4, num_query_groups=2, hidden_size=192)
# bf16 keeps 8 mantissa bits (relative rounding 2^-9 per op); over 4 layers the logits' relative RMS error
# stays near 1e-2. A wrong weight, slice or kernel gives ~1. fp32 on CUDA (TF32 off) agrees to ~1e-6.
BF16_REL_TOL = 5e-2
FP32_REL_TOL = 1e-4
# Dense bf16 peak FLOP/s of the accelerators we report MFU for (NVIDIA datasheets, no sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}
PAIRS = {
    # teacher preset, student = teacher with these changes (random weights: speed and memory only)
    "smollm2-135m": dict(ffn_hidden_size=768, mbs=8, seq=2048),
    "llama3.2-1b": dict(ffn_hidden_size=4096, hidden_size=1536, mbs=2, seq=2048),
}


@dataclass
class Row:
    """One line of the GPU check table."""

    name: str
    status: str
    """PASS, FAIL, SKIP, INFO (a figure without a pass criterion) or ERROR (the row raised)."""
    value: str = ""
    detail: str = ""
    seconds: float = 0.0


def model_cfg(**changes: Any):
    """The reference architecture as a ModelConfig, with ``changes``."""
    from nemo_minitron.config.model import ModelConfig

    return ModelConfig(**{**REF_ARCH, **changes})


def preset(name: str):
    """A ModelConfig from ``conf/model/<name>.yaml``."""
    import yaml

    from nemo_minitron.config.model import ModelConfig
    from nemo_minitron.paths import conf_dir

    return ModelConfig.from_dict(yaml.safe_load((Path(conf_dir()) / "model" / f"{name}.yaml").read_text()))


def prune_job(root: Path, out: str, precision: str):
    """The prune job of the reference checkpoint on the stored calibration tokens (TP=1, PP=1)."""
    from nemo_minitron.config.model import ModelConfig
    from nemo_minitron.config.prune import ExportConfig, MegatronPruneConfig, PruneConfig

    return MegatronPruneConfig(
        model=ModelConfig(restore_from_path=str(root / "ckpt"), precision=precision),
        prune=PruneConfig(calib_data=str(root / "calib.pt"), num_calib_size=32, calib_seq_length=64,
                          num_val_samples=8, calib_batch_size=4, **PRUNE_TARGETS),
        export=ExportConfig(save_path=str(root / out), overwrite=True))


def make_reference(root: Path) -> None:
    """fp32 CPU reference: checkpoint, logits on fixed tokens, calibration data and the CPU prune."""
    from nemo_minitron import runtime
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.models.builder import build_gpt_model
    from nemo_minitron.models.forward import forward_logits
    from nemo_minitron.prune.pipeline import run_prune

    assert not torch.cuda.is_available(), "the reference must run with CUDA hidden (CUDA_VISIBLE_DEVICES=)"
    root.mkdir(parents=True, exist_ok=True)
    runtime.init_model_parallel(1, 1, seed=5)
    cfg = model_cfg(precision="fp32")
    model = build_gpt_model(cfg)
    save_checkpoint(model, cfg, root / "ckpt", overwrite=True)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (4, 128), generator=g)
    torch.save({"tokens": tokens, "logits": forward_logits(model, tokens)}, root / "ref.pt")
    calib = torch.randint(0, cfg.vocab_size, (48, 64), generator=g)
    torch.save({"tokens": calib, "mask": torch.ones_like(calib, dtype=torch.bool)}, root / "calib.pt")
    run_prune(prune_job(root, "cpu_prune", "fp32"))


def ensure_reference(root: Path, timeout: float = 400) -> Path:
    """Make the CPU reference under ``root`` unless it is already there; returns ``root``."""
    if (root / "cpu_prune" / "pruning_report.json").exists():
        return root
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "4"),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "tests.gpu.rows", "reference", str(root)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"CPU reference failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return root


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative RMS error of logits, centred per position (a softmax ignores a constant shift)."""
    a = a.double() - a.double().mean(-1, keepdim=True)
    ref = ref.double() - ref.double().mean(-1, keepdim=True)
    return float((a - ref).norm() / ref.norm())


def _model_on_device(cfg, ckpt: Path, **overrides):
    from nemo_minitron.checkpoint import load_checkpoint
    from nemo_minitron.models.builder import build_gpt_model

    model = build_gpt_model(cfg, **overrides)
    load_checkpoint(model, cfg, ckpt)
    return model


def row_logits(root: Path, impl: str = "local") -> list[Row]:
    """bf16 (and fp32) logits on this device vs the fp32 CPU reference, same weights; plus a wrong-weight control."""
    from nemo_minitron import runtime
    from nemo_minitron.models.builder import build_gpt_model
    from nemo_minitron.models.forward import forward_logits

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = torch.load(root / "ref.pt", weights_only=True)
    runtime.init_model_parallel(1, 1, seed=5)
    rows = []
    fp32 = _model_on_device(model_cfg(precision="fp32", transformer_impl=impl), root / "ckpt")
    err32 = _rel_err(forward_logits(fp32, ref["tokens"]).float().cpu(), ref["logits"])
    rows.append(Row(f"logits fp32 {impl} vs CPU fp32", "PASS" if err32 <= FP32_REL_TOL else "FAIL",
                    f"rel err {err32:.2e}", f"tolerance {FP32_REL_TOL:g} (TF32 off)"))
    bf16 = build_gpt_model(model_cfg(precision="bf16", transformer_impl=impl))
    state = {k: v for k, v in fp32.state_dict().items() if not k.endswith("_extra_state")}
    missing, unexpected = bf16.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    assert not missing and not unexpected, (missing, unexpected)
    err16 = _rel_err(forward_logits(bf16, ref["tokens"]).float().cpu(), ref["logits"])
    runtime.seed_everything(99)
    control = build_gpt_model(model_cfg(precision="bf16", transformer_impl=impl))
    err_control = _rel_err(forward_logits(control, ref["tokens"]).float().cpu(), ref["logits"])
    ok = err16 <= BF16_REL_TOL < err_control
    rows.append(Row(f"logits bf16 {impl} vs CPU fp32", "PASS" if ok else "FAIL", f"rel err {err16:.2e}",
                    f"tolerance {BF16_REL_TOL:g}; other weights give {err_control:.2f}"))
    return rows


def row_te_vs_local(root: Path) -> Row:
    """Transformer Engine spec vs local spec on the same weights (fp32, TF32 off)."""
    from nemo_minitron import runtime
    from nemo_minitron.models.forward import forward_logits

    ref = torch.load(root / "ref.pt", weights_only=True)
    runtime.init_model_parallel(1, 1, seed=5)
    local = forward_logits(_model_on_device(model_cfg(precision="fp32", transformer_impl="local"), root / "ckpt"),
                           ref["tokens"]).float().cpu()
    te = forward_logits(_model_on_device(model_cfg(precision="fp32", transformer_impl="transformer_engine"),
                                         root / "ckpt"), ref["tokens"]).float().cpu()
    err = _rel_err(te, local)
    return Row("logits TE vs local (fp32)", "PASS" if err <= 1e-3 else "FAIL", f"rel err {err:.2e}", "tolerance 1e-3")


def row_prune(root: Path) -> Row:
    """TP=1 prune on this device (fp32, TF32 off) keeps the same units as the CPU prune of the same data."""
    from nemo_minitron.prune.pipeline import run_prune

    torch.backends.cuda.matmul.allow_tf32 = False
    rep = run_prune(prune_job(root, "device_prune", "fp32"))
    cpu = json.loads((root / "cpu_prune" / "pruning_report.json").read_text())
    same = rep["kept"] == cpu["kept"] and rep.get("dropped") == cpu.get("dropped")
    diff = [k for k in cpu["kept"] if rep["kept"].get(k) != cpu["kept"][k]]
    return Row("prune TP=1 kept units == CPU", "PASS" if same else "FAIL",
               f"{len(cpu['kept'])} groups compared", "identical" if same else f"differ: {diff}")


def _trainer(student, student_cfg, teacher, teacher_cfg, mbs: int, gbs: int, seq: int, steps: int, run_dir: Path):
    from nemo_minitron.distill.objective import build_loss
    from nemo_minitron.train.trainer import Trainer
    from tests.workers.distill_common import SyntheticData, train_cfg

    ctx = _ctx()
    cfg = train_cfg("distill", teacher="unused", max_steps=steps, mbs=mbs, gbs=gbs, seq=seq,
                    optim="distributed_fused_adam")
    data = SyntheticData(student_cfg.vocab_size, seq, mbs, ctx.dp_rank, ctx.dp_size)
    loss = build_loss(cfg, ctx, student, student_cfg, teacher, teacher_cfg)
    return Trainer(cfg, ctx, student, student_cfg, data, run_dir, loss), data


_CTX = None


def _ctx():
    global _CTX
    from megatron.core import parallel_state as ps

    from nemo_minitron import runtime

    if _CTX is None or not ps.model_parallel_is_initialized() or ps.get_tensor_model_parallel_world_size() != 1:
        _CTX = runtime.init_model_parallel(1, 1, seed=11)
    return _CTX


def row_kd(root: Path, steps: int = 20, impl: str = "local") -> Row:
    """``steps`` bf16 KD steps with the distributed optimizer: reference teacher -> pruned student; loss falls."""
    from nemo_minitron.checkpoint import load_checkpoint, load_model_config
    from nemo_minitron.distill.teacher import load_teacher
    from nemo_minitron.models.builder import build_gpt_model

    _ctx()
    scfg = load_model_config(root / "cpu_prune").replace(precision="bf16", transformer_impl=impl)
    student = build_gpt_model(scfg)
    load_checkpoint(student, scfg, root / "cpu_prune")
    teacher, tcfg = load_teacher(str(root / "ckpt"), scfg, 128)
    trainer, data = _trainer(student, scfg, teacher, tcfg, mbs=4, gbs=8, seq=128, steps=steps,
                             run_dir=root / f"kd_{impl}")
    it = data.train_iterator(0)
    losses = [trainer.train_step([next(it) for _ in range(trainer.num_micro)])["loss"] for _ in range(steps)]
    trainer.close()
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    ok = all(math.isfinite(x) for x in losses) and last < first
    return Row(f"KD {steps} steps bf16 distopt {impl}", "PASS" if ok else "FAIL",
               f"loss {first:.3f} -> {last:.3f}", "mean of first 5 vs last 5 steps; must fall")


def fusion_overrides(on: bool) -> dict:
    """TransformerConfig fusions available here (TE/apex kernels only where importable)."""
    if not on:
        return {}
    from nemo_minitron.mcore_compat import have_transformer_engine

    te = have_transformer_engine()
    over = dict(bias_activation_fusion=True, bias_dropout_fusion=True, masked_softmax_fusion=True)
    if te:
        over.update(apply_rope_fusion=True, gradient_accumulation_fusion=True, persist_layer_norm=True)
    return over


def row_speed(pair: str, fusions: bool, recompute: Optional[str], impl: str = "local", steps: int = 5) -> Row:
    """tokens/s, MFU and peak memory of the KD step for a random-weight teacher/student pair."""
    from nemo_minitron.distill.teacher import freeze
    from nemo_minitron.models.builder import build_gpt_model
    from nemo_minitron.plan.flops import distill_flops_per_token, mfu

    spec = dict(PAIRS[pair])
    mbs, seq = spec.pop("mbs"), spec.pop("seq")
    _ctx()
    tcfg = preset(pair).replace(precision="bf16", transformer_impl=impl)
    scfg = tcfg.replace(**spec)
    over = fusion_overrides(fusions)
    if recompute:
        over.update(recompute_granularity=recompute)
        if recompute == "full":
            over.update(recompute_method="uniform", recompute_num_layers=1)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    teacher = build_gpt_model(tcfg, **fusion_overrides(fusions))
    freeze(teacher)
    student = build_gpt_model(scfg, **over)
    trainer, data = _trainer(student, scfg, teacher, tcfg, mbs=mbs, gbs=2 * mbs, seq=seq, steps=steps + 2,
                             run_dir=Path("/tmp/nm_gpu_speed"))
    it = data.train_iterator(0)
    micro = [next(it) for _ in range(trainer.num_micro)]
    for _ in range(2):
        trainer.train_step(micro)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(micro)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    peak_mem = torch.cuda.max_memory_allocated() / 2**30
    trainer.close()
    del trainer, student, teacher
    torch.cuda.empty_cache()
    tok_s = 2 * mbs * seq / dt
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    util = f"MFU {100 * mfu(tok_s, distill_flops_per_token(scfg, tcfg, seq), peak):.1f}%" if peak else "MFU n/a"
    tag = f"{'fusions' if fusions else 'no fusions'}, recompute {recompute or 'off'}"
    return Row(f"speed {pair} pair {impl} ({tag})", "INFO", f"{tok_s:,.0f} tok/s, {util}",
               f"peak {peak_mem:.1f} GiB, mbs {mbs} x 2 micro, seq {seq}, {dt * 1e3:.0f} ms/step")


def row_tp2(root: Path, sequence_parallel: bool) -> Row:
    """Reference logits at TP=2 (optionally with sequence parallelism) in a 2-GPU torchrun job."""
    from tests.launch import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "tests.gpu.rows", "tp2", str(root), "1" if sequence_parallel else "0"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = root / f"tp2_sp{int(sequence_parallel)}.json"
    if proc.returncode != 0 or not out.exists():
        return Row(f"logits TP=2{' + SP' if sequence_parallel else ''}", "ERROR", "",
                   proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else f"exit {proc.returncode}")
    err = json.loads(out.read_text())["rel_err"]
    return Row(f"logits TP=2{' + SP' if sequence_parallel else ''} bf16 vs CPU fp32",
               "PASS" if err <= BF16_REL_TOL else "FAIL", f"rel err {err:.2e}", f"tolerance {BF16_REL_TOL:g}")


def _tp2_worker(root: Path, sequence_parallel: bool) -> None:
    from nemo_minitron import runtime
    from nemo_minitron.models.forward import forward_logits

    ctx = runtime.init_model_parallel(2, 1, seed=5)
    ref = torch.load(root / "ref.pt", weights_only=True)
    cfg = model_cfg(precision="bf16", tensor_model_parallel_size=2)
    model = _model_on_device(cfg, root / "ckpt", sequence_parallel=sequence_parallel)
    err = _rel_err(forward_logits(model, ref["tokens"]).float().cpu(), ref["logits"])
    if ctx.rank == 0:
        (root / f"tp2_sp{int(sequence_parallel)}.json").write_text(json.dumps({"rel_err": err}))
    runtime.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "reference":
        make_reference(Path(sys.argv[2]))
    elif sys.argv[1] == "tp2":
        _tp2_worker(Path(sys.argv[2]), sys.argv[3] == "1")
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
