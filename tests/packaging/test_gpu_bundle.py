"""The GPU bundle installs offline on a bare Python 3.12 + torch machine, and the GPU check's dry run passes there.

The bare machine is simulated: a fresh CPython 3.12 venv that sees only torch and torch's own dependencies
(linked from the newest stack's venv), no megatron-core, hydra or omegaconf. ``scripts/test.sh`` builds the
bundle (``scripts/gpu_bundle.sh``) before the suite; without it these tests skip and say so.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.launch import REPO

BUNDLE = REPO / ".gpu_bundle"
NEWEST = REPO / ".venv-mcore-newest"
PY312 = Path(os.environ.get("PY312", "/root/.pyenv/versions/3.12.1/bin/python3.12"))
TORCH_SIDE = re.compile(r"^(torch|torchgen|functorch|nvidia|triton|sympy|mpmath|networkx|jinja2|markupsafe|fsspec|"
                        r"filelock|typing_extensions|setuptools|isympy|cuda|_distutils_hack|pkg_resources)", re.I)

pytestmark = pytest.mark.skipif(not (BUNDLE / "MANIFEST.txt").exists() or not NEWEST.exists() or not PY312.exists(),
                                reason="GPU bundle not built (bash scripts/gpu_bundle.sh) or no Python 3.12 stack")


def test_bundle_is_small_and_complete():
    wheels = sorted(p.name for p in BUNDLE.glob("*.whl"))
    size = sum(p.stat().st_size for p in BUNDLE.iterdir())
    assert size < 60 * 2**20, f"bundle is {size / 2**20:.1f} MB"
    for name in ("megatron_core", "hydra_core", "omegaconf", "antlr4", "nemo_minitron"):
        assert any(w.lower().startswith(name) for w in wheels), (name, wheels)
    assert not any(TORCH_SIDE.match(w) for w in wheels), "the bundle must not carry torch or its dependencies"
    assert all(("cp312" in w or "none-any" in w or "abi3" in w) for w in wheels), wheels


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A fresh Python 3.12 venv that can import torch (and what torch needs) and nothing else of ours."""
    root = tmp_path_factory.mktemp("bare")
    subprocess.run([str(PY312), "-m", "venv", str(root / "venv")], check=True, timeout=120)
    site_src = next(NEWEST.glob("lib/python3.12/site-packages"))
    torch_dir = root / "torch_only"
    torch_dir.mkdir()
    for entry in site_src.iterdir():
        if TORCH_SIDE.match(entry.name):
            (torch_dir / entry.name).symlink_to(entry)
    site = next((root / "venv").glob("lib/python3.12/site-packages"))
    (site / "torch_only.pth").write_text(str(torch_dir) + "\n")
    return root / "venv" / "bin" / "python"


@pytest.mark.timeout(600)
def test_offline_install_and_dry_run_on_a_bare_machine(bare_python, tmp_path):
    checkout = tmp_path / "checkout"  # a copy, so the install folder of the real checkout is not touched
    shutil.copytree(REPO, checkout, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv*", ".git", "__pycache__", ".gpu_site*", "*.egg-info", ".pytest_cache", ".ruff_cache", "outputs",
        "runs", ".cache", "data_cache", "build", "dist"))
    probe = subprocess.run([str(bare_python), "-c", "import torch, importlib.util as u; "
                            "print(u.find_spec('megatron') is None and u.find_spec('hydra') is None)"],
                           capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "True", probe.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHON=str(bare_python), PIP_NO_INDEX="1", PIP_CONFIG_FILE="/dev/null",
               CUDA_VISIBLE_DEVICES="")
    run = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=checkout, env=env, capture_output=True,
                         text=True, timeout=540)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "installed from .gpu_bundle" in out and "dry run ok" in out, out[-4000:]
    assert "skipped: no Transformer Engine" in out and "skipped: needs 2+ GPUs" in out
    # megatron-core really came from the bundle's install folder
    where = subprocess.run([str(bare_python), "-c", "import megatron.core, hydra; print(megatron.core.__file__)"],
                           cwd=checkout, env=dict(env, PYTHONPATH=str(checkout / ".gpu_site")), capture_output=True,
                           text=True, timeout=120)
    assert str(checkout / ".gpu_site") in where.stdout, where.stderr
