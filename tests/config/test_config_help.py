"""``--help`` lists exactly the schema's keys with their docstrings; Hydra writes nothing into the cwd."""

import dataclasses
import re
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from nemo_minitron.config.help import field_docs, help_text, schema_rows
from nemo_minitron.config.model import arch_fields
from nemo_minitron.config.prune import MegatronPruneConfig
from nemo_minitron.config.store import register_configs
from nemo_minitron.config.train import TrainConfig
from nemo_minitron.paths import conf_dir
from tests.launch import REPO

register_configs()


def _listed_keys(text: str) -> list[str]:
    """Dotted keys of a help page (indentation gives the nesting)."""
    keys, stack = [], []
    body = text.split("Keys (current value, type, meaning):\n", 1)[1].split("\n\n", 1)[0]
    for line in body.splitlines():
        m = re.match(r"^((?:  )*)([A-Za-z_][A-Za-z0-9_]*):", line)
        if not m:
            continue
        depth = len(m.group(1)) // 2
        stack[depth:] = [m.group(2)]
        keys.append(".".join(stack))
    return keys


@pytest.mark.parametrize("name,schema", [("megatron_prune", MegatronPruneConfig), ("megatron_distill", TrainConfig)])
def test_help_lists_exactly_the_schema_keys_each_with_its_docstring(name, schema):
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = compose(config_name=name, return_hydra_config=True)
    text = help_text(name, cfg)
    rows = list(schema_rows(schema))
    assert _listed_keys(text) == [path for path, *_ in rows]
    assert all(doc for _, _, doc, _ in rows), [path for path, _, doc, _ in rows if not doc]
    model_keys = {k.split(".")[1] for k in _listed_keys(text) if k.startswith("model.") and k.count(".") == 1}
    assert model_keys and not model_keys & set(arch_fields())  # the architecture comes from the checkpoint
    if schema is TrainConfig:
        assert "precision" not in model_keys and "trainer.precision" in _listed_keys(text)


def test_field_docs_cover_inherited_fields():
    from nemo_minitron.config.train import TrainModelConfig

    docs = field_docs(TrainModelConfig)
    assert {f.name for f in dataclasses.fields(TrainModelConfig)} == set(docs)


def test_prune_help_shows_values_and_docs_and_writes_nothing(tmp_path):
    """The real entry point: --help with an override shows the value; neither --help nor a run leaves files."""
    script = REPO / "examples" / "megatron_prune.py"
    p = subprocess.run([sys.executable, str(script), "--help", "prune.ffn_hidden_size=96"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "  ffn_hidden_size: 96  (int|null)" in p.stdout
    assert "Target MLP width" in p.stdout and "hidden_size: 64" not in p.stdout
    p = subprocess.run([sys.executable, str(REPO / "examples" / "model_info.py"), "model=tiny", "output=json"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == []  # no outputs/DATE/TIME, .hydra or <job>.log


def test_every_primary_config_uses_the_shared_hydra_settings():
    from pathlib import Path

    import yaml

    for path in sorted(Path(conf_dir()).glob("*.yaml")):
        defaults = yaml.safe_load(path.read_text())["defaults"]
        extends = [d for d in defaults if isinstance(d, str) and (path.parent / f"{d}.yaml").is_file()]
        assert "nemo_minitron_hydra" in defaults or extends, path.name
        with initialize_config_dir(config_dir=conf_dir(), version_base=None):
            hydra = compose(config_name=path.stem, return_hydra_config=True).hydra
        assert hydra.run.dir == "." and hydra.output_subdir is None, path.name
