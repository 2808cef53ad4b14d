"""The conversion CLI and its config, NeMo 2 directories in and out, safety of outputs and archives."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from nemo_minitron.config.model import ConfigError
from tests.workers.interop_common import hf_logits, make_hf_model

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- config


def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from nemo_minitron.config.store import register_configs
    from nemo_minitron.paths import conf_dir

    register_configs()
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        return OmegaConf.to_object(compose(config_name="convert_checkpoint", overrides=overrides))


def test_convert_yaml_composes_and_validates():
    job = _compose(["input_path=a", "output_path=b", "output_format=hf", "model.tensor_model_parallel_size=2"])
    assert job.validate().model.tensor_model_parallel_size == 2 and job.output_format == "hf"
    with pytest.raises(ConfigError, match="input_format='safetensors'"):
        _compose(["input_path=a", "output_path=b", "input_format=safetensors"]).validate()
    with pytest.raises(ConfigError, match="hf_model_type='gpt2'"):
        _compose(["input_path=a", "output_path=b", "hf_model_type=gpt2"]).validate()
    with pytest.raises(ConfigError, match="max_shard_size='lots'"):
        _compose(["input_path=a", "output_path=b", "max_shard_size=lots"]).validate()


# --------------------------------------------------------------------------- NeMo 2


def test_nemo2_out_and_in(world, tmp_path):
    from nemo_minitron.interop.convert import convert
    from nemo_minitron.interop.te_names import checkpoint_tensor_keys

    src = make_hf_model("mistral", tmp_path / "hf")  # explicit head_dim 24 != 64 / 8
    ref = hf_logits(src)
    nemo = convert(tmp_path / "hf", "hf", tmp_path / "nemo2", "nemo2")
    assert not (tmp_path / ".nemo2.megatron-staging").exists()
    assert (nemo / "context" / "model.yaml").is_file()
    assert (nemo / "context" / "nemo_tokenizer" / "tokenizer.json").is_file()
    assert (nemo / "weights" / "metadata.json").is_file() and (nemo / "weights" / "common.pt").is_file()
    keys = checkpoint_tensor_keys(nemo / "weights")
    # NeMo 2 layout: module. prefix, stacked layers, TE-fused norm names, per-group QKV rows
    assert keys["module.decoder.layers.self_attention.linear_qkv.layer_norm_weight"] == (2, 64)
    assert keys["module.decoder.layers.self_attention.linear_qkv.weight"] == (2, (8 + 2 * 4) * 24, 64)
    assert keys["module.decoder.layers.mlp.linear_fc1.weight"] == (2, 2 * 96, 64)
    assert keys["module.output_layer.weight"] == (128, 64)
    import yaml

    model_yaml = yaml.safe_load((nemo / "context" / "model.yaml").read_text())
    assert model_yaml["config"]["kv_channels"] == 24 and model_yaml["config"]["num_query_groups"] == 4

    with tarfile.open(tmp_path / "model.nemo", "w") as tar:  # a packed NeMo 2 checkpoint imports too
        tar.add(nemo, arcname="model")
    back = convert(tmp_path / "model.nemo", "nemo2", tmp_path / "hf_back", "hf")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert (back / "tokenizer.json").is_file()
    assert torch.equal(hf_logits(back), ref)
    with pytest.raises(FileExistsError, match="already exists"):
        convert(nemo, "nemo2", tmp_path / "hf_back", "hf")


def test_megatron_to_megatron_attaches_tokenizer(world, tmp_path):
    from nemo_minitron.checkpoint import tokenizer_path
    from nemo_minitron.interop.convert import convert
    from tests.workers.interop_common import megatron_logits

    make_hf_model("qwen3", tmp_path / "hf")
    ckpt = convert(tmp_path / "hf", "hf", tmp_path / "m1", "megatron")
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text((tokenizer_path(ckpt) / "tokenizer.json").read_text())
    copy = convert(ckpt, "megatron", tmp_path / "m2", "megatron", tokenizer_path=tok, tp=2)
    assert sorted(p.name for p in tokenizer_path(copy).iterdir()) == ["tokenizer.json"]
    assert torch.equal(megatron_logits(copy), megatron_logits(ckpt))


# --------------------------------------------------------------------------- safety


def test_safe_tar_extraction_refuses_escapes(tmp_path):
    from nemo_minitron.interop.safety import UnsafeArchiveError, safe_extract_tar

    def tar_with(name, link=None):
        path = tmp_path / f"a{len(list(tmp_path.iterdir()))}.tar"
        with tarfile.open(path, "w") as tar:
            info = tarfile.TarInfo(name)
            if link is None:
                info.size = 2
                tar.addfile(info, io.BytesIO(b"ok"))
            else:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
        return path

    out = safe_extract_tar(tar_with("context/model.yaml"), tmp_path / "ok")
    assert (out / "context" / "model.yaml").read_bytes() == b"ok"
    for bad in (tar_with("../evil.txt"), tar_with("/tmp/evil.txt"), tar_with("x/../../evil"),
                tar_with("link", link="../../etc/passwd"), tar_with("link2", link="/etc/passwd")):
        with pytest.raises(UnsafeArchiveError):
            safe_extract_tar(bad, tmp_path / "bad")
    assert not (tmp_path / "evil.txt").exists()


def test_atomic_output_dir(tmp_path):
    from nemo_minitron.interop.safety import OutputExistsError, atomic_output_dir

    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # nothing left behind, not even the hidden temp dir
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "done").write_text("1")
    assert (tmp_path / "out" / "done").is_file()
    with pytest.raises(OutputExistsError):
        with atomic_output_dir(tmp_path / "out"):
            pass
    with atomic_output_dir(tmp_path / "out", overwrite=True, markers=("done",)) as tmp:
        (tmp / "new").write_text("2")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new"]


def test_bin_weights_are_loaded_weights_only(tmp_path):
    from nemo_minitron.interop.safetensors_io import HFWeights, ShardedSafetensorsWriter

    torch.save({"a": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    assert torch.equal(HFWeights(tmp_path).get("a"), torch.ones(2))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"a": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="[Ww]eights only"):
        HFWeights(tmp_path)
    w = ShardedSafetensorsWriter(tmp_path / "s", max_shard_bytes=64)
    (tmp_path / "s").mkdir()
    w.add_all([(f"t{i}", torch.full((10,), float(i))) for i in range(3)])
    files = w.close()
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    assert len(files) == 4 and index["metadata"]["total_size"] == 120
    assert torch.equal(HFWeights(tmp_path / "s").get("t2"), torch.full((10,), 2.0))


# --------------------------------------------------------------------------- CLI


def test_cli_hf_to_hf(tmp_path):
    src = make_hf_model("pruned", tmp_path / "hf")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
               NEMO_MINITRON_NO_PROGRESS="1")
    cmd = [sys.executable, str(REPO / "examples" / "convert_checkpoint.py"), f"input_path={tmp_path / 'hf'}",
           f"output_path={tmp_path / 'out'}", "output_format=hf", "model.tensor_model_parallel_size=2",
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "wrote" in proc.stdout
    assert torch.equal(hf_logits(tmp_path / "out"), hf_logits(src))
