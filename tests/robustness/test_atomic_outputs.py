"""Output-path safety (nemo_minitron.atomic): refused locations, overwrite policy, stale temporary siblings."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_minitron.atomic import (
    UnsafeOutputError,
    atomic_dir,
    check_output_path,
    clean_stale_temps,
    private_temp_dir,
)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("path", ["", "  ", ".", "/", "~"])
def test_refuses_empty_cwd_root_home(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeOutputError, match="output_path"):
        check_output_path(path, overwrite=True)


def test_refuses_a_directory_holding_the_input(tmp_path):
    src = tmp_path / "models" / "teacher"
    src.mkdir(parents=True)
    for out in (tmp_path / "models", src, tmp_path):
        with pytest.raises(UnsafeOutputError, match="contains the input"):
            check_output_path(out, "export.save_path", overwrite=True, inputs=[src])
    assert check_output_path(tmp_path / "student", inputs=[src]) == tmp_path / "student"


def test_overwrite_replaces_only_our_complete_outputs(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        check_output_path(theirs)
    with pytest.raises(UnsafeOutputError, match="not an output of nemo_minitron"):
        with atomic_dir(theirs, overwrite=True) as tmp:
            (tmp / "x").write_text("new")
    assert (theirs / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs"]

    ours = tmp_path / "ours"
    with atomic_dir(ours, markers=("DONE",)) as tmp:
        (tmp / "DONE").write_text("1")
    with atomic_dir(ours, overwrite=True, markers=("DONE",)) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in ours.iterdir()) == ["b"]
    with pytest.raises(UnsafeOutputError, match="looked for DONE"):  # the replacement has no marker
        check_output_path(ours, overwrite=True, markers=("DONE",))
    empty = tmp_path / "empty"
    empty.mkdir()
    check_output_path(empty, overwrite=True)  # nothing to lose


def test_cwd_with_overwrite_keeps_its_files(world, tiny_cfg, tmp_path, monkeypatch):
    """An unset $OUT (output_path="") used to delete the current directory's contents."""
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.models.builder import build_gpt_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mywork.txt").write_text("keep me")
    model = build_gpt_model(tiny_cfg)
    for path in ("", "."):
        with pytest.raises(UnsafeOutputError):
            save_checkpoint(model, tiny_cfg, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mywork.txt"]


def test_stale_temp_siblings_of_dead_processes_are_removed(tmp_path):
    final = tmp_path / "ckpt"
    dead, live = _dead_pid(), os.getpid()
    stale = [tmp_path / f".ckpt.incomplete-{dead}-1", tmp_path / f".ckpt.nemo2-extract-{dead}",
             tmp_path / f".ckpt.old-{dead}-5"]
    keep = [tmp_path / f".ckpt.incomplete-{live}-1", tmp_path / f".other.incomplete-{dead}-1", tmp_path / "ckpt2"]
    for d in stale + keep:
        d.mkdir()
    (tmp_path / f".ckpt.tmp-{dead}").write_text("x")
    removed = clean_stale_temps(final)
    assert len(removed) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)
    # writing the output cleans up too
    (tmp_path / f".ckpt.incomplete-{dead}-2").mkdir()
    with atomic_dir(final) as tmp:
        (tmp / "f").write_text("ok")
    assert not (tmp_path / f".ckpt.incomplete-{dead}-2").exists()


def test_private_temp_dirs_of_dead_processes_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    stale = tmp_path / f"nm_tok_{_dead_pid()}_abc"
    stale.mkdir()
    mine = private_temp_dir("tok")
    assert mine.parent == tmp_path and mine.name.startswith(f"nm_tok_{os.getpid()}_")
    assert not stale.exists()


def test_preprocess_refuses_existing_output_by_default(tmp_path):
    from nemo_minitron.config.data import PrepareWikitextConfig
    from nemo_minitron.data.preprocess import preprocess_corpus, tokenize_to_indexed_dataset

    assert PrepareWikitextConfig(input="i", tokenizer="t", output_prefix="o").overwrite is False
    import inspect

    for fn in (preprocess_corpus, tokenize_to_indexed_dataset):
        assert inspect.signature(fn).parameters["overwrite"].default is False


def test_distill_export_needs_overwrite(tmp_path):
    """export.save_path of a distillation run is refused before training when it exists."""
    from nemo_minitron.config.model import ConfigError
    from nemo_minitron.train import recipe

    assert "overwrite=cfg.export.overwrite" in Path(recipe.__file__).read_text()
    from nemo_minitron.config.train import ExportConfig

    assert ExportConfig().overwrite is False
    out = tmp_path / "student_kd"
    out.mkdir()
    (out / "COMPLETE").write_text("ok\n")
    with pytest.raises(ConfigError, match="export.save_path.*overwrite=true"):
        check_output_path(str(out), "export.save_path", exists_error=ConfigError)
    Path(out).joinpath("x").write_text("y")


def test_atomic_file_replaces_on_success_and_leaves_the_original_on_failure(tmp_path):
    from nemo_minitron.atomic import atomic_file, write_text_atomic

    target = tmp_path / "out" / "report.json"
    assert write_text_atomic(target, "one") == target and target.read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "one"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]  # no temporary left behind
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
