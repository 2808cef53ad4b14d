"""The environment the README sets up has matplotlib; without it the pruning plot is skipped with a warning."""

import logging
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_setup_env_installs_matplotlib():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    script = (ROOT / "scripts" / "setup_env.sh").read_text()
    assert "EXTRAS=${EXTRAS:-$default_extras}" in script
    default = re.search(r"primary\)[^;]*;[^\n]*default_extras=([\w,]+)", script).group(1)
    assert "eval" in default.split(",")  # the lm-eval adapter tests run in CI on the primary stack
    assert any(dep.startswith("matplotlib") for extra in default.split(",") for dep in extras[extra])
    assert "setup_env.sh" in (ROOT / "scripts" / "demo.sh").read_text()


def test_plot_skipped_with_a_warning(monkeypatch, tmp_path, caplog):
    from nemo_minitron.prune import report

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    logger = logging.getLogger(report.log.name)
    logger.addHandler(caplog.handler)
    try:
        assert report.plot_layers(tmp_path / "p.png", None, []) is None
    finally:
        logger.removeHandler(caplog.handler)
    assert "matplotlib is not installed" in caplog.text
    assert not (tmp_path / "p.png").exists()
