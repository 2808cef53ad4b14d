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


def _schema_baseline(path: Path):
    """What ``path`` is merged over: its schema's defaults, plus the primary configs it extends."""
    rel = path.relative_to(CONF)
    if rel.parent == Path("."):
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            schema = OmegaConf.get_type(compose(config_name=path.stem))
            base = OmegaConf.structured(schema)
            for entry in yaml.safe_load(path.read_text()).get("defaults", []):
                if isinstance(entry, str) and (CONF / f"{entry}.yaml").is_file():
                    base = compose(config_name=entry)
        return base
    group = str(rel.parent)
    users = [p for p in PRIMARY if group in _groups_of(p)] or PRIMARY
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=users[0])
    return OmegaConf.structured(OmegaConf.get_type(cfg[group]))


def _restated(raw: dict, base, prefix: str = "") -> list[str]:
    found = []
    for key, value in raw.items():
        if key in ("defaults", "hydra") and not prefix:
            continue
        node = base._get_node(key) if base is not None else None
        if node is None:
            continue  # an unknown key fails composition (test above)
        if isinstance(value, dict) and not node._is_none() and not node._is_missing():
            found += _restated(value, node, f"{prefix}{key}.")
            continue
        if value == "???":
            found.append(f"{prefix}{key}: ??? " + ("restates the schema's required value" if node._is_missing()
                                                    else "does not override a default (a merged ??? is ignored)"))
        elif not node._is_missing() and OmegaConf.to_container(OmegaConf.create({"v": node}))["v"] == value:
            found.append(f"{prefix}{key}: {value!r} is the default")
    return found


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF)))
def test_yaml_holds_only_what_differs_from_the_schema(path):
    raw = OmegaConf.to_container(OmegaConf.load(path))
    assert _restated(raw, _schema_baseline(path)) == []


def test_restating_a_default_is_detected(tmp_path):
    base = OmegaConf.structured(OmegaConf.get_type(_compose_prune()))
    raw = {"prune": {"num_calib_size": 1024, "calib_seq_length": 128, "hidden_size": None},
           "export": {"save_path": "???"}}
    assert _restated(raw, base) == ["prune.num_calib_size: 1024 is the default",
                                    "prune.hidden_size: None is the default",
                                    "export.save_path: ??? does not override a default (a merged ??? is ignored)"]


def _compose_prune():
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="megatron_prune")


def test_finetune_extends_distill():
    """The two training entry points share one base: finetune is distill minus the teacher, at a lower LR."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        d = OmegaConf.to_container(compose(config_name="megatron_distill"))
        f = OmegaConf.to_container(compose(config_name="megatron_finetune"))
    diff = {k for k in d if d[k] != f[k]}
    assert diff == {"name", "mode", "model"}
    assert f["mode"] == "finetune" and f["model"]["kd_teacher_restore_from_path"] is None
    assert f["model"]["optim"]["lr"] == pytest.approx(d["model"]["optim"]["lr"] / 5)
