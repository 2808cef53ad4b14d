"""Per-file SHA-256 recorded at save time and verified on load: damaged shards are named, not loaded."""

import json

import pytest

from nemo_minitron.checkpoint import METADATA_FILE, CheckpointError, load_checkpoint, save_checkpoint, verify_checksums
from nemo_minitron.models.builder import build_gpt_model
from nemo_minitron.runtime import seed_everything


@pytest.fixture()
def ckpt(world, tiny_cfg, tmp_path):
    seed_everything(5)
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    return save_checkpoint(build_gpt_model(tiny_cfg), tiny_cfg, tmp_path / "ckpt", tokenizer_dir=tok)


def _shards(path):
    return sorted(p for p in (path / "weights").iterdir() if p.suffix == ".distcp")


def test_every_file_has_a_checksum(ckpt):
    sums = json.loads((ckpt / METADATA_FILE).read_text())["checksums"]
    files = sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file())
    assert sorted(sums) == [f for f in files if f not in (METADATA_FILE, "COMPLETE")]
    assert "tokenizer/tokenizer.json" in sums and "weights/.metadata" in sums
    verify_checksums(ckpt)


def test_flipped_byte_in_a_shard_is_refused_naming_the_file(ckpt, tiny_cfg):
    shard = _shards(ckpt)[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{shard.name} is corrupt"):
        load_checkpoint(build_gpt_model(tiny_cfg), tiny_cfg, ckpt)


def test_truncated_metadata_pickle_is_our_error(ckpt, tiny_cfg):
    md = ckpt / "weights" / ".metadata"
    md.write_bytes(md.read_bytes()[:10])
    with pytest.raises(CheckpointError, match=r"\.metadata is corrupt"):
        load_checkpoint(build_gpt_model(tiny_cfg), tiny_cfg, ckpt)


def test_missing_shard_is_named(ckpt, tiny_cfg):
    shard = _shards(ckpt)[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard.name} is missing"):
        load_checkpoint(build_gpt_model(tiny_cfg), tiny_cfg, ckpt)


def test_checkpoints_without_checksums_still_load(ckpt, tiny_cfg):
    meta = json.loads((ckpt / METADATA_FILE).read_text())
    del meta["checksums"]
    (ckpt / METADATA_FILE).write_text(json.dumps(meta))
    load_checkpoint(build_gpt_model(tiny_cfg), tiny_cfg, ckpt)


def test_verification_can_be_skipped(ckpt, monkeypatch):
    shard = _shards(ckpt)[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    monkeypatch.setenv("NEMO_MINITRON_VERIFY_CHECKSUMS", "0")
    verify_checksums(ckpt)
    monkeypatch.setenv("NEMO_MINITRON_VERIFY_CHECKSUMS", "1")
    with pytest.raises(CheckpointError, match="is corrupt"):
        verify_checksums(ckpt)
