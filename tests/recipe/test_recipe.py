"""examples/minitron.py: correct -> prune -> distill (two rounds) -> evaluate -> export, and resume after kills."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launch import REPO
from tests.recipe.common import tiny_teacher

ENV = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO),
           PYTHONWARNINGS="ignore", NEMO_MINITRON_NO_PROGRESS="1")

CALIB = "num_calib_size: 8, calib_seq_length: 32, calib_batch_size: 4, num_val_samples: 4"


def _setup(tmp_path: Path) -> list[str]:
    from nemo_minitron import runtime
    from nemo_minitron.data.preprocess import preprocess_corpus

    runtime.init_model_parallel(1, 1, seed=1)
    wt, tok = tiny_teacher(tmp_path)
    preprocess_corpus(wt, tok, tmp_path / "data" / "wiki", workers=1, progress=False)
    data = tmp_path / "data"
    stages = (f"stages=[{{name: mlp, prune: {{ffn_hidden_size: 64, {CALIB}}}, "
              f"distill: {{steps: 8, lr: 3e-4, checkpoint_every_n_steps: 2}}}}, "
              f"{{name: depth, prune: {{num_layers: 3, {CALIB}}}, distill: {{steps: 2}}, teacher: previous}}]")
    return [sys.executable, str(REPO / "examples" / "minitron.py"), f"work_dir={tmp_path}/work",
            f"teacher={tmp_path}/teacher", f"train_data={data}/wiki_train_text_document",
            f"valid_data={data}/wiki_valid_text_document", "correction.steps=4", "correction.checkpoint_every_n_steps=2",
            stages, "seq_length=32", "eval_samples=4", "export_formats=[megatron,hf]",
            f"hydra.run.dir={tmp_path}/hydra"]


def _run_until(cmd, cwd, done, timeout=400) -> str:
    """Start the recipe, SIGKILL its process group as soon as ``done()`` holds; return its output."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=cwd,
                            start_new_session=True)
    start = time.time()
    while proc.poll() is None and not done():
        assert time.time() - start < timeout, "recipe did not reach the kill point"
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job, data-loader workers included
    out, _ = proc.communicate(timeout=60)
    return out


def test_recipe_resumes_after_kills(tmp_path):
    from nemo_minitron.checkpoint import is_checkpoint

    cmd = _setup(tmp_path)
    work = tmp_path / "work"
    # 1. killed between steps: right after the corrected teacher is complete
    _run_until(cmd, tmp_path, lambda: is_checkpoint(work / "teacher_corrected"))
    assert is_checkpoint(work / "teacher_corrected") and not is_checkpoint(work / "mlp" / "distilled")
    # 2. killed inside training: once the first round's distillation has written a train state
    states = work / "mlp" / "runs" / "distill" / "checkpoints"
    out = _run_until(cmd, tmp_path, lambda: any(states.glob("step_*")) if states.is_dir() else False)
    assert "finetune: " in out and "exists, skipped" in out, out[-3000:]
    assert not is_checkpoint(work / "mlp" / "distilled")
    # 3. runs to the end, resuming the interrupted distillation instead of restarting it
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-8000:]
    assert "resumed from" in out and "prune mlp: " in out, out[-5000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["final_student"].endswith("depth/distilled")
    rows = json.loads((work / "results.json").read_text())["rows"]
    names = [r["model"] for r in rows]
    assert names == ["teacher", "teacher (corrected)", "mlp: pruned", "mlp: distilled", "depth: pruned",
                     "depth: distilled"]
    params = [r["params"] for r in rows]
    assert params[0] == params[1] > params[2] == params[3] > params[4] == params[5]
    assert all(r["ppl"] > 1 and r["tokens"] > 0 for r in rows)
    assert rows[3]["loss"] < rows[2]["loss"]  # distillation recovers part of what pruning lost
    assert (work / "export" / "hf" / "config.json").is_file()
    hf_cfg = json.loads((work / "export" / "hf" / "config.json").read_text())
    assert hf_cfg["num_hidden_layers"] == 3 and hf_cfg["intermediate_size"] == 64
    # 4. a finished run is all skips; one step alone needs its inputs
    again = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and "resumed from" not in again.stdout + again.stderr
    alone = subprocess.run([*cmd[:2], f"work_dir={tmp_path}/other", *cmd[3:], "steps=[distill]"],
                           capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert alone.returncode == 2 and "add 'correct' to steps" in alone.stderr, alone.stderr[-2000:]


def test_recipe_config_errors_name_the_key():
    from nemo_minitron.config.model import ConfigError
    from nemo_minitron.recipe.config import CompressionStage, MinitronConfig

    base = dict(teacher="t", train_data="d")
    with pytest.raises(ConfigError, match="stages is empty"):
        MinitronConfig(**base).validate()
    with pytest.raises(ConfigError, match="steps contains 'train'"):
        MinitronConfig(**base, steps=["train"]).validate()
    with pytest.raises(ConfigError, match=r"stages\[0\].teacher"):
        MinitronConfig(**base, stages=[CompressionStage(name="a", teacher="student")]).validate()
    with pytest.raises(ConfigError, match="unique"):
        MinitronConfig(**base, stages=[CompressionStage(name="a"), CompressionStage(name="a")]).validate()
    with pytest.raises(ConfigError, match="export_formats"):
        MinitronConfig(**base, stages=[CompressionStage(name="a")], export_formats=["onnx"]).validate()
