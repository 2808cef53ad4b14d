"""The Hydra search-path plugin: nemo_minitron's YAML is found by --config-name from any script and directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# setuptools' strict editable installs expose hydra_plugins.* to imports but not to pkgutil.iter_modules (which
# Hydra's plugin discovery uses); a wheel install needs nothing. The checkout root on the path stands in for it.
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))

APP = '''
import hydra
from omegaconf import OmegaConf

@hydra.main(config_path=None, config_name="megatron_prune", version_base=None)
def main(cfg):
    print("restore=" + str(cfg.model.restore_from_path), "ffn=" + str(cfg.prune.ffn_hidden_size))
    print("type=" + type(OmegaConf.to_object(cfg)).__name__)

main()
'''


def test_foreign_app_finds_our_config_by_name(tmp_path):
    """A script outside the package, with no config_path of its own, composes megatron_prune (schema-typed)."""
    (tmp_path / "app.py").write_text(APP)
    out = subprocess.run([sys.executable, "app.py", "model.restore_from_path=/x", "export.save_path=/y", "prune.ffn_hidden_size=64",
                          "hydra.run.dir=.", "hydra.output_subdir=null"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "restore=/x ffn=64" in out.stdout and "type=MegatronPruneConfig" in out.stdout
    bad = subprocess.run([sys.executable, "app.py", "prune.ffn_hiden_size=64", "hydra.run.dir=.",
                          "hydra.output_subdir=null"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=ENV)
    assert bad.returncode != 0 and "ffn_hiden_size" in bad.stderr  # still checked against the schema


def test_plugin_is_discovered_and_ships_in_the_wheel():
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    names = [type(p).__name__ if not isinstance(p, type) else p.__name__
             for p in Plugins.instance().discover(SearchPathPlugin)]
    assert "NemoMinitronSearchPathPlugin" in names
    setup = (REPO / "setup.py").read_text()
    assert 'find_namespace_packages(include=["hydra_plugins.*"])' in setup
    assert not (REPO / "hydra_plugins" / "__init__.py").exists()  # a namespace package shared with others
