"""The wheel carries the Hydra YAML, and conf_dir() finds it when installed (not only in a checkout)."""

import json
import re
import shutil
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
    assert "nemo_minitron/nemo_plugin/cli.py" in names and "nemo_minitron/nemo_plugin/kd_logits_lm.yaml" in names
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


def _dockerfile_copies() -> list[tuple[list[str], str]]:
    """The (sources, destination) of every COPY line of the Dockerfile (continuation lines joined)."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    copies = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0].upper() == "COPY":
            args = [w for w in words[1:] if not w.startswith("--")]
            copies.append((args[:-1], args[-1]))
    return copies


@pytest.mark.timeout(300)
def test_wheel_builds_from_exactly_the_dockerfile_copies(tmp_path):
    """The Dockerfile's build context (only what it COPYs) is enough to build and install the package."""
    copies = _dockerfile_copies()
    assert copies, "Dockerfile has no COPY lines"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for sources, dest in copies:
        for src in sources:
            s = REPO / src
            assert s.exists(), f"Dockerfile copies {src}, which is not in the checkout"
            target = ctx / (src if dest in ("./", ".") else dest.removeprefix("./"))
            if s.is_dir():
                shutil.copytree(s, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(s, target)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"),
         str(ctx)], capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    names = zipfile.ZipFile(next((tmp_path / "whl").glob("nemo_minitron-*.whl"))).namelist()
    assert "nemo_minitron/mcore_compat.py" in names and "nemo_minitron/conf/megatron_prune.yaml" in names
    # every RUN step's local script is among the copied files
    text = (REPO / "Dockerfile").read_text()
    scripts = re.findall(r"python ((?:scripts|examples)/[\w./-]+\.py)", text)
    for loop in re.findall(r"for entry in ([\w ]+); do", text):
        scripts += [f"examples/{name}.py" for name in loop.split()]
    assert len(scripts) >= 5, scripts
    for script in scripts:
        assert (ctx / script).exists(), f"Dockerfile runs {script} but does not COPY it"


def test_dockerfile_protects_the_host_stack():
    """The Dockerfile installs under the frozen host constraints and verifies nothing moved, then tries --help."""
    text = (REPO / "Dockerfile").read_text()
    assert "--no-deps" not in text  # dependency checks must not be hidden
    assert re.search(r"stack_check\.py freeze (\S+).*pip install[^\n]*-c \1.*stack_check\.py verify \1", text, re.S)
    assert "--help" in text and "ARG NEMO_TAG=25.11" in text
    readme = (REPO / "README.md").read_text()
    assert "25.11" in readme and "26.02" in readme


def test_stack_check_detects_a_moved_package(tmp_path):
    frozen = tmp_path / "stack.txt"
    run = [sys.executable, str(REPO / "scripts" / "stack_check.py")]
    assert subprocess.run(run + ["freeze", str(frozen)], capture_output=True, timeout=60).returncode == 0
    pins = frozen.read_text()
    assert "torch==" in pins and "megatron-core==" in pins
    ok = subprocess.run(run + ["verify", str(frozen)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    frozen.write_text(pins.replace("megatron-core==", "megatron-core==0.0.1+") + "apex==1.0\n")
    moved = subprocess.run(run + ["verify", str(frozen)], capture_output=True, text=True, timeout=60)
    assert moved.returncode == 1 and "megatron-core" in moved.stderr and "apex: 1.0 -> removed" in moved.stderr


@pytest.mark.compat
@pytest.mark.timeout(300)
def test_installing_the_wheel_moves_no_stack_package(tmp_path):
    """pip's resolver, asked to install our wheel into this environment, installs nothing but nemo_minitron."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"),
         str(REPO)], capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp_path / "whl").glob("nemo_minitron-*.whl"))
    report = tmp_path / "report.json"
    dry = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links", str(tmp_path / "whl"),
         "--report", str(report), f"{wheel}[hf]"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    would = {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]}
    assert would <= {"nemo-minitron"}, f"installing the wheel would also change {sorted(would - {'nemo-minitron'})}"
