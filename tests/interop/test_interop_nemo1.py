"""NeMo 1 ``.nemo`` checkpoints (tar or extracted directory) in and out, and checkpoint paths of any format."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch
import yaml

from nemo_minitron.config.model import ConfigError
from tests.workers.interop_common import hf_logits, make_hf_model


def test_nemo1_out_and_in(world, tmp_path):
    from nemo_minitron.interop.convert import convert
    from nemo_minitron.interop.nemo1 import is_nemo1
    from nemo_minitron.interop.te_names import checkpoint_tensor_keys

    src = make_hf_model("qwen2", tmp_path / "hf")  # QKV bias, GQA 8/4
    ref = hf_logits(src)
    nemo = convert(tmp_path / "hf", "hf", tmp_path / "model.nemo", "nemo")
    assert nemo.is_file() and tarfile.is_tarfile(nemo) and is_nemo1(nemo)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with tarfile.open(nemo) as tar:
        names = set(tar.getnames())
        cfg = yaml.safe_load(tar.extractfile("./model_config.yaml").read())
    assert {"./model_config.yaml", "./model_weights/metadata.json", "./tokenizer/tokenizer.json"} <= names
    assert cfg["mcore_gpt"] and cfg["activation"] == "fast-swiglu" and cfg["normalization"] == "rmsnorm"
    assert (cfg["num_query_groups"], cfg["kv_channels"], cfg["qkv_bias"], cfg["bias"]) == (4, 8, True, False)
    assert cfg["tokenizer"]["type"] == "nemo:tokenizer" and cfg["tokenizer"]["library"] == "huggingface"

    extracted = tmp_path / "extracted"
    with tarfile.open(nemo) as tar:
        tar.extractall(extracted, filter="data")
    keys = checkpoint_tensor_keys(extracted / "model_weights")
    assert keys["model.decoder.layers.self_attention.linear_qkv.bias"] == (2, (8 + 2 * 4) * 8)
    for source in (nemo, extracted):  # the archive and the extracted directory both import
        back = convert(source, "nemo", tmp_path / f"hf_{source.name}", "hf")
        assert torch.equal(hf_logits(back), ref)
        assert (back / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_nemo1_config_errors_and_escaping_paths(world, tmp_path):
    from nemo_minitron.interop.nemo1 import artifact, model_config_from_nemo1

    base = dict(num_layers=2, hidden_size=64, ffn_hidden_size=96, num_attention_heads=8, activation="fast-swiglu",
                normalization="rmsnorm", position_embedding_type="rope", bias=False)
    cfg = model_config_from_nemo1(base, vocab_size=128)
    assert (cfg.gated_linear_unit, cfg.activation, cfg.num_query_groups, cfg.kv_channels) == (True, "silu", 8, 8)
    with pytest.raises(ConfigError, match="activation='swish' is not supported"):
        model_config_from_nemo1(base | {"activation": "swish"}, vocab_size=128)
    with pytest.raises(ConfigError, match="mcore_gpt=false"):
        model_config_from_nemo1(base | {"mcore_gpt": False}, vocab_size=128)
    with pytest.raises(ConfigError, match="points outside the checkpoint"):
        artifact(tmp_path, "nemo:../../etc/passwd")


def test_unsafe_nemo_archive_is_refused_and_leaves_nothing(world, tmp_path):
    from nemo_minitron.interop.nemo1 import import_nemo1
    from nemo_minitron.interop.safety import UnsafeArchiveError

    bad = tmp_path / "bad.nemo"
    with tarfile.open(bad, "w") as tar:
        for name, data in (("model_config.yaml", b"num_layers: 1\n"), ("../escape.txt", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UnsafeArchiveError):
        import_nemo1(bad, tmp_path / "out")
    assert not (tmp_path.parent / "escape.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.nemo"]


def test_resolve_checkpoint_converts_nemo_inputs_once(world, tmp_path):
    from nemo_minitron.checkpoint import is_checkpoint
    from nemo_minitron.interop.convert import convert, resolve_checkpoint

    make_hf_model("llama_tied", tmp_path / "hf")
    mega = convert(tmp_path / "hf", "hf", tmp_path / "mega", "megatron")
    assert resolve_checkpoint(mega) == mega
    nemo2 = convert(mega, "megatron", tmp_path / "n2", "nemo2")
    nemo1 = convert(mega, "megatron", tmp_path / "n1.nemo", "nemo")
    for src in (nemo2, nemo1):
        got = resolve_checkpoint(src)
        assert is_checkpoint(got) and got.name == f".{src.name}.minitron"
        stamp = got.stat().st_mtime_ns
        assert resolve_checkpoint(src) == got and got.stat().st_mtime_ns == stamp  # reused, not converted again
    missing = tmp_path / "nope"
    assert resolve_checkpoint(missing) == missing  # the megatron loader reports what is wrong with it
