"""Training recipe end to end on real megatron datasets (single process): KD and finetune runs, export loads as a
plain model without teacher weights, resume with raised max_steps, SIGTERM saves and stops, keep-last-k, bad
teachers fail clearly, and the Hydra launch scripts with NeMo-style keys."""

import os
import signal
import subprocess
import sys
import tarfile

import pytest
import torch

from nemo_minitron.checkpoint import load_checkpoint, read_metadata
from nemo_minitron.config.model import ConfigError
from nemo_minitron.models.builder import build_gpt_model
from nemo_minitron.train import checkpointing
from tests.fixtures import corpus as C
from tests.launch import REPO
from tests.workers.distill_common import make_checkpoint, tiny, train_cfg

VOCAB = 320


@pytest.fixture(scope="module")
def setup(world, tmp_path_factory):
    from nemo_minitron.data.preprocess import preprocess_corpus

    root = tmp_path_factory.mktemp("recipe")
    wt = C.write_wikitext_dir(root / "wt", 40, 4, 4, seed=3)
    tok = C.train_bpe_tokenizer([C.wikitext_text(C.make_articles(48, seed=3))], root / "tok", vocab_size=VOCAB)
    out = preprocess_corpus(wt, tok, root / "ds" / "wt", workers=1, progress=False)
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.runtime import seed_everything

    for name, cfg, seed, scale in (("teacher", tiny(vocab_size=VOCAB, hidden_size=96, ffn_hidden_size=192), 3, 20.0),
                                   ("student", tiny(vocab_size=VOCAB, num_layers=2), 5, 1.0)):
        seed_everything(seed)
        m = build_gpt_model(cfg)
        with torch.no_grad():
            m.output_layer.weight.mul_(scale)
        save_checkpoint(m, cfg, root / name, tokenizer_dir=tok)
    return dict(root=root, tok=tok, train=out["train"].prefix)


def _cfg(setup, mode="distill", steps=3, run="run", **kw):
    cfg = train_cfg(mode, teacher=str(setup["root"] / "teacher") if mode == "distill" else None, max_steps=steps,
                    seq=32, mbs=2, gbs=4)
    cfg.model.restore_from_path = str(setup["root"] / "student")
    cfg.model.data.data_prefix = [setup["train"]]
    cfg.model.data.splits_string = "80,20,0"
    cfg.trainer.val_check_interval = 2
    cfg.trainer.limit_val_batches = 2
    cfg.exp_manager.create_tensorboard_logger = True
    cfg.exp_manager.explicit_log_dir = str(setup["root"] / run)
    cfg.export.save_path = str(setup["root"] / f"{run}_export")
    for k, v in kw.items():
        obj, _, attr = k.rpartition(".")
        target = cfg
        for part in obj.split(".") if obj else []:
            target = getattr(target, part)
        setattr(target, attr, v)
    return cfg


@pytest.mark.compat
def test_distill_export_resume_and_tensorboard(setup):
    from nemo_minitron.train.recipe import run

    cfg = _cfg(setup, steps=3)
    res = run(cfg)
    assert res.status == "completed" and res.step == 3
    assert res.val is not None and res.val["val_ppl"] == pytest.approx(torch.tensor(res.val["val_loss"]).exp().item())
    # the export is a plain student checkpoint carrying the tokenizer; no teacher weights inside
    meta = read_metadata(res.export_path)
    assert meta["model"]["num_layers"] == 2 and meta["model"]["hidden_size"] == 64
    assert (setup["root"] / "run_export" / "tokenizer" / "tokenizer.json").is_file()
    student = build_gpt_model(tiny(vocab_size=VOCAB, num_layers=2))
    load_checkpoint(student, tiny(vocab_size=VOCAB, num_layers=2), res.export_path)  # strict
    from megatron.core import dist_checkpointing

    def shapes(path):
        meta = dist_checkpointing.load_tensors_metadata(str(path / "weights"))
        return {k: tuple(v.global_shape) for k, v in meta.items()}

    # same tensors and shapes as the 2-layer, 64-wide student it started from: nothing of the teacher
    assert shapes(setup["root"] / "run_export") == shapes(setup["root"] / "student")
    assert shapes(setup["root"] / "run" / "checkpoints" / "step_0000003" / "model") == shapes(setup["root"] / "student")
    # the exported student differs from the initial one (it trained)
    init = build_gpt_model(tiny(vocab_size=VOCAB, num_layers=2))
    load_checkpoint(init, tiny(vocab_size=VOCAB, num_layers=2), setup["root"] / "student")
    assert not torch.equal(init.output_layer.weight, student.output_layer.weight)
    # TensorBoard events and train-state checkpoints live under the run directory
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(setup["root"] / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/logits_loss", "train/kd_loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
            "val/loss", "val/ppl"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert [s for s, _ in checkpointing.list_checkpoints(setup["root"] / "run")] == [3]
    # the same command with a raised max_steps resumes from step 3 and runs 2 more steps; the existing
    # export is refused before any training unless export.overwrite=true
    with pytest.raises(ConfigError, match="export.save_path.*overwrite=true"):
        run(_cfg(setup, steps=5))
    assert [s for s, _ in checkpointing.list_checkpoints(setup["root"] / "run")] == [3]
    cfg = _cfg(setup, steps=5, **{"export.overwrite": True})
    res2 = run(cfg)
    assert res2.status == "completed" and res2.step == 5
    assert [s for s, _ in checkpointing.list_checkpoints(setup["root"] / "run")] == [3, 5]


def test_sigterm_saves_and_stops_and_keep_last_k(setup):
    from nemo_minitron.train import recipe
    from nemo_minitron.train.trainer import Trainer

    fit = Trainer.fit

    def fit_with_sigterm(self, on_step=None):
        return fit(self, on_step=lambda step, s: os.kill(os.getpid(), signal.SIGTERM) if step == 3 else None)

    cfg = _cfg(setup, mode="finetune", steps=6, run="sig", **{"exp_manager.checkpoint_every_n_steps": 1,
                                                             "exp_manager.keep_last_k": 2})
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    Trainer.fit = fit_with_sigterm
    try:
        res = recipe.run(cfg)
    finally:
        Trainer.fit = fit
    assert res.status == "preempted" and res.step == 3 and res.export_path is None
    assert [s for s, _ in checkpointing.list_checkpoints(setup["root"] / "sig")] == [2, 3]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers restored
    res = recipe.run(cfg)
    assert res.status == "completed" and res.step == 6
    assert [s for s, _ in checkpointing.list_checkpoints(setup["root"] / "sig")] == [5, 6]


def test_bad_teachers_fail_clearly(setup):
    from nemo_minitron.distill.teacher import TeacherLoadError, load_teacher

    student = tiny(vocab_size=VOCAB, num_layers=2)
    # vocabulary mismatch
    make_checkpoint(tiny(vocab_size=256), setup["root"] / "teacher_v256", seed=1)
    with pytest.raises(ConfigError, match="vocab_size=256 != student vocab_size=320"):
        load_teacher(setup["root"] / "teacher_v256", student)
    # a checkpoint missing one weight
    cfg = tiny(vocab_size=VOCAB)
    model = build_gpt_model(cfg)
    original = model.sharded_state_dict

    def without_final_norm(*a, **kw):
        sd = original(*a, **kw)
        sd.pop("decoder.final_layernorm.weight")
        return sd

    model.sharded_state_dict = without_final_norm
    from nemo_minitron.checkpoint import save_checkpoint

    save_checkpoint(model, cfg, setup["root"] / "teacher_missing")
    with pytest.raises(TeacherLoadError, match="decoder.final_layernorm.weight"):
        load_teacher(setup["root"] / "teacher_missing", student)
    with pytest.raises(ConfigError, match="kd_teacher_restore_from_path"):
        load_teacher("", student)
    # same vocabulary size, different tokenizer
    from nemo_minitron.distill.teacher import check_same_tokenizer

    other = setup["root"] / "other_tok_ckpt"
    C.train_bpe_tokenizer(["completely different words here " * 20], other / "tokenizer", vocab_size=VOCAB)
    check_same_tokenizer(setup["root"] / "student", setup["root"] / "teacher")
    with pytest.raises(ConfigError, match="different tokenizers"):
        check_same_tokenizer(setup["root"] / "student", other)


def test_config_errors_name_the_key(setup):
    cfg = _cfg(setup)
    cfg.model.global_batch_size = 6
    cfg.model.micro_batch_size = 4
    with pytest.raises(ConfigError, match="model.global_batch_size=6 is not divisible by model.micro_batch_size=4"):
        cfg.validate(1)
    cfg = _cfg(setup)
    cfg.kd.temperature = 0
    with pytest.raises(ConfigError, match="kd.temperature"):
        cfg.validate(1)
    cfg = _cfg(setup)
    cfg.model.kd_teacher_restore_from_path = None
    with pytest.raises(ConfigError, match="model.kd_teacher_restore_from_path"):
        cfg.validate(1)


def test_launch_scripts_with_nemo_keys(setup):
    root = setup["root"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    common = [f"model.data.data_prefix=[{setup['train']}]", "model.data.splits_string='80,20,0'",
              "model.micro_batch_size=2", "model.global_batch_size=4", "model.encoder_seq_length=32",
              "trainer.val_check_interval=2", "trainer.limit_val_batches=2", "model.optim.lr=1e-3",
              "model.optim.sched.min_lr=1e-4", "model.optim.sched.warmup_steps=1", f"hydra.run.dir={root}/hydra"]
    cmd = [sys.executable, str(REPO / "examples" / "megatron_distill.py"), f"model.restore_from_path={root}/student",
           f"model.kd_teacher_restore_from_path={root}/teacher", "trainer.max_steps=2", "kd.temperature=2.0",
           f"model.nemo_path={root}/cli_kd.nemo", f"exp_manager.explicit_log_dir={root}/cli_run", *common]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "completed at step 2" in p.stdout and "validation loss" in p.stdout
    assert tarfile.is_tarfile(root / "cli_kd.nemo")  # the NeMo 1 tutorial's output key and format
    cmd = [sys.executable, str(REPO / "examples" / "megatron_finetune.py"), f"model.restore_from_path={root}/cli_kd.nemo",
           "trainer.max_steps=1", f"export.save_path={root}/cli_ft", *common]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (root / "nemo_experiments" / "megatron_finetune" / "checkpoints" / "step_0000001" / "COMPLETE").is_file()
    assert read_metadata(root / "cli_ft")["extra"]["trained_by"] == "finetune"


def test_resume_with_different_settings_is_refused_naming_the_keys(setup):
    from nemo_minitron.train.recipe import run

    res = run(_cfg(setup, steps=1, run="same_dir", **{"export.overwrite": True}))
    assert res.status == "completed"
    changed = _cfg(setup, steps=2, run="same_dir", **{"kd.temperature": 3.0, "model.optim.lr": 1e-2,
                                                             "export.overwrite": True})
    with pytest.raises(ConfigError, match=r"different settings: kd.temperature: saved 1.0, now 3.0; "
                                          r"model.optim.lr: saved 0.003, now 0.01"):
        run(changed)
    # keys a resume may change (length, logging, outputs) are accepted
    res = run(_cfg(setup, steps=2, run="same_dir", **{"trainer.log_every_n_steps": 5, "export.overwrite": True}))
    assert res.status == "completed" and res.step == 2


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_launch_script_stop_signal_saves_and_exits_with_documented_code(setup, sig, code):
    """SIGTERM (SLURM pre-emption) exits 143 for a requeue, Ctrl-C exits 130; both save, no traceback."""
    import time

    from nemo_minitron.train import signals

    assert (signals.PREEMPTED_EXIT_CODE, signals.INTERRUPTED_EXIT_CODE) == (143, 130)
    root = setup["root"]
    run_dir = root / f"cli_sig{int(sig)}"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(REPO / "examples" / "megatron_finetune.py"), f"model.restore_from_path={root}/student",
           f"model.data.data_prefix=[{setup['train']}]", "model.data.splits_string='80,20,0'",
           "model.micro_batch_size=2", "model.global_batch_size=2", "model.encoder_seq_length=32",
           "trainer.max_steps=500", "trainer.val_check_interval=0", "exp_manager.checkpoint_every_n_steps=1",
           f"export.save_path={root}/cli_sig_export", f"exp_manager.explicit_log_dir={run_dir}",
           f"hydra.run.dir={root}/hydra_sig"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
    try:
        deadline = time.time() + 240
        while not (run_dir / "checkpoints" / "step_0000001" / "COMPLETE").is_file():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, out + err
    assert "Traceback" not in err and "run the same command to resume" in err, err[-2000:]
    steps = [s for s, _ in checkpointing.list_checkpoints(run_dir)]
    assert steps and steps[-1] < 500 and not (root / "cli_sig_export").exists()
