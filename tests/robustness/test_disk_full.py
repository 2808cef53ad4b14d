"""A write that the file system refuses (disk full, file too large) is one line naming the path; nothing half-written.

The commands run in a subprocess under ``RLIMIT_FSIZE`` with SIGXFSZ ignored, so a write past the
limit fails with ``EFBIG`` as a full disk fails with ``ENOSPC`` (also in megatron-core's forked
checkpoint writer processes, which inherit both).
"""

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")


def _limited(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def _run_limited(cmd, limit):
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
                          preexec_fn=_limited(limit))


def _check(proc, named: str, directory: Path):
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    ours = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(ours) == 1 and named in ours[0] and "File too large" in ours[0], err[-2000:]
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == [], "a temporary output was left"


def test_checkpoint_write_refused_by_the_file_system(tmp_path):
    from tests.workers.interop_common import make_hf_model

    make_hf_model("llama", tmp_path / "hf")  # ~300 KB of weights: the shard write fails past 100 KB
    out = tmp_path / "ckpt"
    proc = _run_limited([sys.executable, "examples/convert_checkpoint.py", f"input_path={tmp_path / 'hf'}",
                         f"output_path={out}", f"hydra.run.dir={tmp_path / 'hydra'}"], 100_000)
    _check(proc, str(out), tmp_path)
    assert not out.exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_dataset_write_refused_by_the_file_system(tmp_path, workers):
    from tests.fixtures import corpus as C

    wt = C.write_wikitext_dir(tmp_path / "wt", n_train=40, n_valid=8, n_test=8)
    tok = C.train_bpe_tokenizer([C.wikitext_text(C.make_articles(5))], tmp_path / "tok")
    ds = tmp_path / "ds"
    proc = _run_limited([sys.executable, "examples/prepare_wikitext.py", f"input={wt}", f"tokenizer={tok}",
                         f"output_prefix={ds / 'wt'}", f"workers={workers}", "progress=false",
                         f"hydra.run.dir={tmp_path / 'hydra'}"], 10_000)
    _check(proc, str(ds / "wt"), tmp_path)
    assert not ds.exists() or not any(ds.iterdir())
