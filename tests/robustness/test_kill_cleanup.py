"""kill -9 and SIGTERM of real entry-point processes: previous output or nothing, no orphans, no temp dirs.

Each case starts an ``examples/*.py`` command in its own process, waits for a point of its run
(imports, the hidden temporary output appearing), signals it, and then checks: the previous
complete output is untouched (or there is none), no process it started is still alive, and after
SIGTERM (or after the next run, for kill -9) no temporary directory of ours is left.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.launch import alive as _alive
from tests.launch import descendants as _children

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")


def _wait_gone(pids, timeout=20.0) -> set[int]:
    end = time.time() + timeout
    while time.time() < end:
        left = {p for p in pids if _alive(p)}
        if not left:
            return set()
        time.sleep(0.2)
    return {p for p in pids if _alive(p)}


def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def _signal_at(cmd, ready, sig, timeout=900):
    """Run ``cmd``; when ``ready()`` turns true send ``sig``; return (returncode, descendants seen, stderr)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    end = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < end:
            seen |= _children(proc.pid)
            if ready():
                seen |= _children(proc.pid)
                proc.send_signal(sig)
                break
            time.sleep(0.05)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, seen, err


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tests.workers.interop_common import make_hf_model

    d = tmp_path_factory.mktemp("kill") / "hf"
    make_hf_model("llama", d)
    return d


def test_checkpoint_writer_child_dies_with_its_parent(tmp_path):
    """megatron-core's writer keeps a multiprocessing server process; kill -9 of the parent must take it along."""
    script = textwrap.dedent("""
        import sys, time
        from nemo_minitron import runtime
        from nemo_minitron.checkpoint import save_checkpoint
        from nemo_minitron.config.model import ModelConfig
        from nemo_minitron.models.builder import build_gpt_model
        runtime.init_model_parallel(1, 1, seed=1)
        cfg = ModelConfig(name="t", num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                          num_query_groups=2, vocab_size=64, max_position_embeddings=64)
        save_checkpoint(build_gpt_model(cfg), cfg, sys.argv[1])
        print("SAVED", flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "ckpt")], env=ENV, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "SAVED"
        kids = _children(proc.pid)
        assert kids, "the writer started no helper process: this test would not test anything"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert not _wait_gone(kids), "helper processes outlived their parent"
    finally:
        if proc.poll() is None:
            proc.kill()


_SLOW = pytest.mark.slow


@pytest.mark.parametrize("sig,point", [pytest.param(signal.SIGTERM, "during-save", marks=_SLOW),
                                       pytest.param(signal.SIGKILL, "during-save", marks=_SLOW),
                                       pytest.param(signal.SIGTERM, "early", marks=_SLOW),
                                       pytest.param(signal.SIGKILL, "early", marks=_SLOW)],
                         ids=["sigterm-during-save", "kill9-during-save", "sigterm-early", "kill9-early"])
def test_convert_interrupted(hf_dir, tmp_path, sig, point):
    out = tmp_path / "ckpt"
    cmd = [sys.executable, "examples/convert_checkpoint.py", f"input_path={hf_dir}", f"output_path={out}",
           "overwrite=true", f"hydra.run.dir={tmp_path / 'hydra'}"]
    # a previous complete output that must survive the interrupted replacement
    first = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    before = (out / "nemo_minitron.json").read_bytes()
    t0 = time.time()
    if point == "during-save":
        def ready():
            return any(p.name.startswith(".ckpt.incomplete-") for p in tmp_path.iterdir())
    else:
        def ready():
            return time.time() - t0 > 2.0
    rc, seen, err = _signal_at(cmd, ready, sig)
    assert "Traceback" not in err, err[-3000:]
    assert rc != 0 or point == "during-save", "the signal must land while the command runs"
    if rc == 0:  # the save finished between two polls: a complete new output
        assert (out / "COMPLETE").is_file()
    else:
        assert rc in (-sig, 128 + sig), (rc, err[-2000:])
        assert (out / "nemo_minitron.json").read_bytes() == before
    assert not _wait_gone(seen), "processes outlived the command"
    if sig == signal.SIGTERM:
        assert _temps(tmp_path) == [], _temps(tmp_path)
    again = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _temps(tmp_path) == [], _temps(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill9"])
def test_prepare_interrupted_keeps_the_previous_set(tmp_path, sig):
    from tests.fixtures import corpus as C

    wt = C.write_wikitext_dir(tmp_path / "wt", n_train=400, n_valid=40, n_test=40)
    tok = C.train_bpe_tokenizer([C.wikitext_text(C.make_articles(20))], tmp_path / "tok")
    cmd = [sys.executable, "examples/prepare_wikitext.py", f"input={wt}", f"tokenizer={tok}",
           f"output_prefix={tmp_path / 'ds' / 'wt'}", "workers=2", "overwrite=true", "progress=false",
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    first = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    ds = tmp_path / "ds"
    before = {p.name: p.read_bytes() for p in ds.iterdir()}
    assert len(before) == 9

    def ready():
        return any(p.name.startswith(".wt.tmp-") for p in ds.iterdir())

    rc, seen, err = _signal_at(cmd, ready, sig)
    assert "Traceback" not in err, err[-3000:]
    after = {p.name: p.read_bytes() for p in ds.iterdir() if not p.name.startswith(".")}
    assert rc in (-sig, 128 + sig), (rc, err[-2000:])
    assert after == before, "an interrupted run changed part of the previous set"
    assert not _wait_gone(seen), "worker processes outlived the command"
    if sig == signal.SIGTERM:
        assert _temps(ds) == []
    again = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _temps(ds) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill9"])
def test_prune_interrupted_during_save_keeps_the_previous_output(hf_dir, tmp_path, sig):
    src = tmp_path / "src"
    conv = subprocess.run([sys.executable, "examples/convert_checkpoint.py", f"input_path={hf_dir}",
                           f"output_path={src}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert conv.returncode == 0, conv.stderr[-2000:]
    out = tmp_path / "pruned"
    cmd = [sys.executable, "examples/megatron_prune.py", f"model.restore_from_path={src}", f"export.save_path={out}",
           "export.overwrite=true", "prune.drop_layers=[1]"]
    first = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    before = (out / "nemo_minitron.json").read_bytes()

    def ready():
        return any(p.name.startswith(".pruned.incomplete-") for p in tmp_path.iterdir())

    rc, seen, err = _signal_at(cmd, ready, sig)
    assert "Traceback" not in err, err[-3000:]
    if rc == 0:  # the save finished between two polls: a complete new output
        assert (out / "COMPLETE").is_file()
    else:
        assert rc in (-sig, 128 + sig), (rc, err[-2000:])
        assert (out / "nemo_minitron.json").read_bytes() == before
    assert not _wait_gone(seen), "processes outlived the command"
    if sig == signal.SIGTERM:
        assert _temps(tmp_path) == [], _temps(tmp_path)
    again = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _temps(tmp_path) == [], _temps(tmp_path)


# ---- SIGTERM at exact points of a save (tests/robustness/sigterm_driver.py) -------------------------------
@pytest.fixture(scope="module")
def pruned_once(tmp_path_factory, world):
    """A source checkpoint and a complete pruned output of it (the "previous output" of every case)."""
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.config.model import ModelConfig
    from nemo_minitron.models.builder import build_gpt_model

    root = tmp_path_factory.mktemp("sigterm")
    cfg = ModelConfig(name="t", num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                      num_query_groups=2, vocab_size=64, max_position_embeddings=64)
    src = save_checkpoint(build_gpt_model(cfg), cfg, root / "src")
    out = root / "pruned"
    first = subprocess.run(_prune_cmd(src, out), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    return src, out


def _prune_cmd(src, out, prefix=()):
    return [sys.executable, *prefix, "examples/megatron_prune.py", f"model.restore_from_path={src}",
            f"export.save_path={out}", "export.overwrite=true", "prune.drop_layers=[1]",
            f"hydra.run.dir={out.parent / 'hydra'}"]


@pytest.mark.parametrize("mode", ["fork", "publish", pytest.param("mid-rename", marks=_SLOW)])
def test_prune_sigterm_at_save_points_exits_143_without_a_half_output(pruned_once, tmp_path, mode):
    """Before the fix a SIGTERM inside a fork hook of the writer was lost: the output was published, exit 0."""
    import shutil

    from nemo_minitron.termination import PREEMPTED_EXIT_CODE

    src, previous = pruned_once
    out = tmp_path / "pruned"
    shutil.copytree(previous, out)
    before = (out / "nemo_minitron.json").read_bytes()
    driver = Path(__file__).with_name("sigterm_driver.py")
    proc = subprocess.Popen(_prune_cmd(src, out, prefix=(str(driver), mode, str(tmp_path))), cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    while proc.poll() is None:
        seen |= _children(proc.pid)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    assert "the signal was never sent" not in err, "the driver missed its point: this case tests nothing"
    assert proc.returncode == PREEMPTED_EXIT_CODE == 143, (proc.returncode, err[-3000:])
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert "terminated by SIGTERM" in err.splitlines()[-1], err[-2000:]
    assert (out / "COMPLETE").is_file() and (out / "pruning_report.json").is_file()
    if mode == "mid-rename":  # the signal came after the old output was moved aside: the new one goes in whole
        assert (out / "nemo_minitron.json").read_bytes() != before
    else:
        assert (out / "nemo_minitron.json").read_bytes() == before
    assert _temps(tmp_path) == [], _temps(tmp_path)
    assert not _wait_gone(seen), "processes outlived the command"


def test_prepare_sigterm_in_a_fork_hook_with_workers_exits_143_and_keeps_the_set(tmp_path):
    """workers=2 forks a pool while a SIGTERM is handled: exit 143, the previous split set untouched, no hang."""
    from tests.fixtures import corpus as C

    wt = C.write_wikitext_dir(tmp_path / "wt", n_train=40, n_valid=8, n_test=8)
    tok = C.train_bpe_tokenizer([C.wikitext_text(C.make_articles(5))], tmp_path / "tok")
    ds = tmp_path / "ds"
    args = [f"input={wt}", f"tokenizer={tok}", f"output_prefix={ds / 'wt'}", "workers=2", "overwrite=true",
            "progress=false", f"hydra.run.dir={tmp_path / 'hydra'}"]
    first = subprocess.run([sys.executable, "examples/prepare_wikitext.py", *args], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in ds.iterdir()}
    driver = Path(__file__).with_name("sigterm_driver.py")
    proc = subprocess.Popen([sys.executable, str(driver), "fork", str(ds), "examples/prepare_wikitext.py", *args],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    end = time.time() + 240
    while proc.poll() is None and time.time() < end:
        seen |= _children(proc.pid)
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        raise AssertionError("prepare_wikitext hung after SIGTERM")
    _, err = proc.communicate(timeout=60)
    assert "the signal was never sent" not in err
    assert proc.returncode == 143, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert {p.name: p.read_bytes() for p in ds.iterdir()} == before
    assert not _wait_gone(seen), "pool workers outlived the command"


from tests.train.test_train_recipe import setup  # noqa: E402,F401  (teacher, student and data of the recipe tests)


@pytest.mark.slow
def test_distill_kill9_mid_run_resumes_exactly(setup, tmp_path):  # noqa: F811
    """kill -9 of a distillation after a few checkpoints: the same command resumes and ends with the unbroken weights."""
    import torch

    from nemo_minitron.checkpoint import load_checkpoint, load_model_config
    from nemo_minitron.models.builder import build_gpt_model

    root = setup["root"]

    def cmd(run):
        return [sys.executable, "examples/megatron_distill.py", f"model.restore_from_path={root}/student",
                f"model.kd_teacher_restore_from_path={root}/teacher", f"model.data.data_prefix=[{setup['train']}]",
                "model.data.splits_string='80,20,0'", "model.micro_batch_size=2", "model.global_batch_size=2",
                "model.encoder_seq_length=32", "trainer.max_steps=6", "trainer.val_check_interval=0",
                "exp_manager.checkpoint_every_n_steps=1", f"export.save_path={tmp_path / run}_export",
                f"exp_manager.explicit_log_dir={tmp_path / run}", f"hydra.run.dir={tmp_path / 'hydra'}"]

    unbroken = subprocess.run(cmd("a"), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]
    rc, seen, err = _signal_at(cmd("b"), lambda: (tmp_path / "b" / "checkpoints" / "step_0000003" / "COMPLETE")
                               .is_file(), signal.SIGKILL)
    assert rc == -signal.SIGKILL, (rc, err[-2000:])
    assert not (tmp_path / "b_export").exists()
    assert not _wait_gone(seen), "processes outlived the killed distillation"
    again = subprocess.run(cmd("b"), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    import re

    resumed = re.search(r"resumed from \S+ \(step (\d+)", again.stderr)
    assert resumed and int(resumed.group(1)) >= 3, again.stderr[-2000:]  # not a restart from step 0
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir() if p.name.startswith(".")] == []
    weights = []
    for run in ("a", "b"):
        cfg = load_model_config(tmp_path / f"{run}_export")
        model = build_gpt_model(cfg)
        load_checkpoint(model, cfg, tmp_path / f"{run}_export")
        weights.append(model.state_dict())
    keys = [k for k in weights[0] if not k.endswith("_extra_state")]
    assert keys and all(torch.equal(weights[0][k], weights[1][k]) for k in keys)
