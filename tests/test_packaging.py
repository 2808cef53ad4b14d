"""The wheel carries the Hydra YAML, and conf_dir() finds it when installed (not only in a checkout)."""

import subprocess
import sys
import zipfile

import pytest

from tests.launch import REPO

pytest.importorskip("setuptools")


@pytest.mark.timeout(300)
def test_wheel_ships_conf_and_finds_it(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"),
         str(REPO)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "whl").glob("nemo_minitron-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for yaml_file in (REPO / "conf").rglob("*.yaml"):
        assert f"nemo_minitron/conf/{yaml_file.relative_to(REPO / 'conf')}" in names, yaml_file
    assert "hydra_plugins/nemo_minitron_searchpath/__init__.py" in names and "hydra_plugins/__init__.py" not in names
    assert "nemo_minitron/nemo_plugin/cli.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "[nemo_run.cli]\nminitron = nemo_minitron.nemo_plugin.cli" in zipfile.ZipFile(wheel).read(entry_points).decode()
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from nemo_minitron.paths import conf_dir; from pathlib import Path;"
        "d = Path(conf_dir()); assert d.is_relative_to(Path(sys.argv[1])), d; print(sorted(p.name for p in (d/'model').glob('*.yaml')))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "llama3.1-8b.yaml" in out.stdout and "tiny.yaml" in out.stdout
