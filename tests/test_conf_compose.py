"""Every YAML under conf/ composes with Hydra against its typed schema and validates.

Top-level files are primary configs; files in sub-directories are options of a config group and
are composed through every primary config whose defaults list selects that group.
"""

import dataclasses
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nemo_minitron.config.store import register_configs
from nemo_minitron.paths import conf_dir

CONF = Path(conf_dir())
register_configs()

PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
OPTIONS = sorted(
    (str(p.parent.relative_to(CONF)), p.stem) for p in CONF.rglob("*.yaml") if p.parent != CONF
)


def _groups_of(primary: str) -> set[str]:
    defaults = yaml.safe_load((CONF / f"{primary}.yaml").read_text()).get("defaults", [])
    groups = set()
    for entry in defaults:
        if isinstance(entry, dict):
            groups.update(k.split("@")[0].lstrip("/").replace("override ", "").strip() for k in entry)
    return groups


def _validate(node) -> None:
    """Convert to dataclasses (when nothing is ???) and run every nested validate() method."""
    schema = OmegaConf.get_type(node)
    assert schema is not None and dataclasses.is_dataclass(schema), "config must name a structured schema"
    if OmegaConf.missing_keys(node):
        return  # required values (e.g. paths) are supplied on the command line; types were checked on merge
    obj = OmegaConf.to_object(node)
    _call_validate(obj)


def _call_validate(obj) -> None:
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        _call_validate(getattr(obj, f.name))
    if hasattr(obj, "validate"):
        obj.validate()


@pytest.mark.parametrize("primary", PRIMARY)
def test_primary_config_composes(primary):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=primary)
    _validate(cfg)


@pytest.mark.parametrize("group,option", OPTIONS)
def test_group_option_composes(group, option):
    users = [p for p in PRIMARY if group in _groups_of(p)]
    assert users, f"conf/{group}/{option}.yaml is not selectable: no primary config lists group '{group}'"
    for primary in users:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose(config_name=primary, overrides=[f"{group}={option}"])
        _validate(cfg)
