"""Recipe results in the format asked for: ``export.save_path=X.nemo`` (NeMo 1 tutorial), ``export.format=nemo2|hf``,
``model.nemo_path`` for distillation; the exported weights equal the nemo_minitron checkpoint of the same run."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch

from nemo_minitron import runtime
from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.config.prune import MegatronPruneConfig, PruneConfig
from nemo_minitron.config.schemas import ExportConfig
from tests.tiny import tiny


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.models.builder import build_gpt_model

    root = tmp_path_factory.mktemp("export")
    runtime.init_model_parallel(1, 1, seed=3)
    cfg = tiny()
    save_checkpoint(build_gpt_model(cfg), cfg, root / "ckpt")
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, cfg.vocab_size, (24, 16), generator=g)
    torch.save({"tokens": tokens, "mask": torch.ones_like(tokens)}, root / "calib.pt")
    return root


def _job(root, save_path, fmt="auto", overwrite=False):
    return MegatronPruneConfig(
        model=ModelConfig(restore_from_path=str(root / "ckpt")),
        prune=PruneConfig(calib_data=str(root / "calib.pt"), num_calib_size=16, calib_seq_length=16,
                          num_val_samples=4, ffn_hidden_size=32, plot=False),
        export=ExportConfig(save_path=str(save_path), format=fmt, overwrite=overwrite))


def _weights(path):
    from nemo_minitron.checkpoint import load_checkpoint, load_model_config
    from nemo_minitron.interop.convert import resolve_checkpoint
    from nemo_minitron.models.builder import build_gpt_model

    ckpt = resolve_checkpoint(path)
    cfg = load_model_config(ckpt)
    runtime.init_model_parallel(1, 1, seed=1)
    model = build_gpt_model(cfg)
    load_checkpoint(model, cfg, ckpt)
    return cfg, {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def test_prune_writes_a_nemo_archive_equal_to_its_megatron_output(world, src):
    from nemo_minitron.interop.nemo1 import is_nemo1
    from nemo_minitron.prune.pipeline import run_prune

    ref = run_prune(_job(src, src / "pruned"))
    rep = run_prune(_job(src, src / "pruned.nemo"))
    nemo = src / "pruned.nemo"
    assert nemo.is_file() and tarfile.is_tarfile(nemo) and is_nemo1(nemo)
    assert json.loads((src / "pruned.nemo.report" / "pruning_report.json").read_text())["kept"] == rep["kept"]
    assert rep["kept"] == ref["kept"]
    assert not [p.name for p in src.iterdir() if "staging" in p.name or "incomplete" in p.name]
    cfg_a, a = _weights(src / "pruned")
    cfg_b, b = _weights(nemo)
    assert cfg_b.ffn_hidden_size == cfg_a.ffn_hidden_size == 32
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="already exists"):  # one overwrite policy for every format
        run_prune(_job(src, nemo))
    before = nemo.stat().st_mtime_ns
    run_prune(_job(src, nemo, overwrite=True))
    assert nemo.stat().st_mtime_ns != before


def test_prune_export_format_nemo2_and_bad_format(world, src):
    from nemo_minitron.interop.nemo2 import is_nemo2_dir
    from nemo_minitron.prune.pipeline import run_prune

    out = src / "pruned_nemo2"
    run_prune(_job(src, out, fmt="nemo2"))
    assert is_nemo2_dir(out) and (out / "pruning_report.json").is_file()
    if not (src / "pruned").exists():
        run_prune(_job(src, src / "pruned"))
    _, a = _weights(src / "pruned")
    _, b = _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="export.format='safetensors' must be one of"):
        run_prune(_job(src, src / "x", fmt="safetensors"))
    assert not (src / "x").exists()


def test_distill_model_nemo_path_is_the_export_path():
    from nemo_minitron.config.train import TrainConfig

    cfg = TrainConfig(mode="finetune")
    cfg.model.restore_from_path = "student"
    cfg.model.nemo_path = "out/student.nemo"
    assert cfg.validate().export.save_path == "out/student.nemo"
    cfg.export.save_path = "elsewhere"
    with pytest.raises(ConfigError, match="model.nemo_path=out/student.nemo and export.save_path=elsewhere"):
        cfg.validate()
