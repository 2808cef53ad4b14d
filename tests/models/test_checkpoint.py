"""Single-process checkpoint behaviour: bitwise round trip, atomicity, refusal of bad directories."""

import json
import os

import pytest
import torch

from nemo_minitron.checkpoint import (
    CheckpointError,
    is_checkpoint,
    load_checkpoint,
    load_model_config,
    read_metadata,
    save_checkpoint,
    tokenizer_path,
)
from nemo_minitron.models.builder import build_gpt_model
from nemo_minitron.runtime import seed_everything


@pytest.fixture()
def saved(world, tiny_cfg, tmp_path):
    seed_everything(3)
    model = build_gpt_model(tiny_cfg)
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    path = save_checkpoint(model, tiny_cfg, tmp_path / "ckpt", tokenizer_dir=tok, extra_metadata={"step": 7})
    return model, path


def _state(model):
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


@pytest.mark.compat
def test_round_trip_bitwise(saved, tiny_cfg):
    model, path = saved
    seed_everything(4)
    other = build_gpt_model(tiny_cfg)
    assert not all(torch.equal(a, b) for a, b in zip(_state(model).values(), _state(other).values()))
    meta = load_checkpoint(other, tiny_cfg, path)
    for key, value in _state(model).items():
        assert torch.equal(value, _state(other)[key]), key
    assert meta["extra"] == {"step": 7}
    assert load_model_config(path).arch_dict() == tiny_cfg.arch_dict()
    assert (tokenizer_path(path) / "tokenizer.json").is_file()


def test_no_leftover_temp_dirs(saved):
    _, path = saved
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt", "tok"]
    assert is_checkpoint(path)


def test_refuses_to_overwrite_unless_asked(saved, tiny_cfg):
    model, path = saved
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(model, tiny_cfg, path)
    save_checkpoint(model, tiny_cfg, path, overwrite=True)
    assert is_checkpoint(path) and tokenizer_path(path) is None


def test_missing_marker_is_refused(saved, tiny_cfg):
    model, path = saved
    os.remove(path / "COMPLETE")
    assert not is_checkpoint(path)
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(model, tiny_cfg, path)


def test_corrupt_metadata_is_refused(saved, tiny_cfg):
    model, path = saved
    (path / "nemo_minitron.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_metadata(path)


def test_wrong_format_version_is_refused(saved):
    _, path = saved
    meta = json.loads((path / "nemo_minitron.json").read_text())
    meta["format_version"] = 99
    (path / "nemo_minitron.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version=99"):
        read_metadata(path)


def test_missing_shard_is_refused(saved, tiny_cfg):
    model, path = saved
    shards = sorted((path / "weights").glob("*.distcp"))
    assert shards
    shards[0].unlink()
    with pytest.raises(CheckpointError, match=f"{shards[0].name} is missing"):
        load_checkpoint(model, tiny_cfg, path)


def test_truncated_shard_is_refused(saved, tiny_cfg):
    model, path = saved
    shard = max((path / "weights").glob("*.distcp"), key=lambda p: p.stat().st_size)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{shard.name} is corrupt"):
        load_checkpoint(model, tiny_cfg, path)


def test_missing_weights_dir_is_refused(saved, tiny_cfg):
    model, path = saved
    for f in (path / "weights").iterdir():
        f.unlink()
    with pytest.raises(CheckpointError, match="not a megatron dist checkpoint"):
        load_checkpoint(model, tiny_cfg, path)


def test_architecture_mismatch_names_fields(saved, tiny_cfg):
    _, path = saved
    cfg = tiny_cfg.replace(ffn_hidden_size=96, qk_layernorm=True)
    other = build_gpt_model(cfg)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(other, cfg, path)
    msg = str(exc.value)
    assert "model.ffn_hidden_size: requested 96, checkpoint has 128" in msg and "model.qk_layernorm" in msg


def test_nonexistent_path(world, tiny_cfg, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_metadata(tmp_path / "nope")
