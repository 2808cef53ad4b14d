"""Untrusted input directories and archives: nothing is read from outside them, nothing is left behind."""

import io
import json
import tarfile

import pytest
import torch
from safetensors.torch import save_file

from nemo_minitron.checkpoint import CheckpointError
from nemo_minitron.interop.safety import UnsafeArchiveError


def test_index_entries_outside_the_directory_are_refused(tmp_path):
    from nemo_minitron.interop.safetensors_io import HFWeights

    d = tmp_path / "model"
    d.mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    save_file({"v": torch.zeros(2)}, str(d / "model-00001.safetensors"))
    index = {"weight_map": {"v": "model-00001.safetensors", "w": "../outside.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside.safetensors.*outside that directory"):
        HFWeights(d)
    index["weight_map"]["w"] = "model-00001.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    HFWeights(d).close()


def test_refused_archive_leaves_no_extraction_dir(tmp_path):
    from nemo_minitron.interop.nemo2 import import_nemo2

    archive = tmp_path / "evil.nemo"
    with tarfile.open(archive, "w") as tar:
        for name in ("ok/context/model.yaml", "../escape.txt"):
            data = b"x"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UnsafeArchiveError, match="escape.txt"):
        import_nemo2(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.nemo"]
