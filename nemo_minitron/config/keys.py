"""Every key of a composed config must be a field of its typed schema.

Hydra rejects an unknown ``key=value`` on a typed node, but ``+key=value`` adds the key anyway and
``OmegaConf.to_object`` then drops it silently. :func:`check_keys` walks the composed config against
its dataclass schemas and raises one :class:`ConfigError` listing every unknown key, each with the
nearest valid key ("did you mean") and, for keys that moved, where they live now (a schema's
``MOVED_KEYS`` class attribute maps an old dotted key to its message).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from nemo_minitron.config.model import ConfigError


def schema_paths(schema: type, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every leaf and nested dataclass field of ``schema``."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        path = f"{prefix}{f.name}"
        yield path
        sub = hints.get(f.name)
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            yield from schema_paths(sub, path + ".")


def unknown_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Dotted paths of keys in ``cfg`` that are not fields of the dataclass typing their node."""
    found: list[str] = []
    if isinstance(cfg, ListConfig):
        for i in range(len(cfg)):
            node = cfg._get_node(i)
            if isinstance(node, (DictConfig, ListConfig)):
                found += unknown_keys(node, f"{prefix}[{i}].")
        return found
    if not isinstance(cfg, DictConfig) or cfg._is_none() or cfg._is_missing():
        return found
    schema = OmegaConf.get_type(cfg)
    names = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in cfg.keys():
        key = str(key)
        if key == "hydra" and not prefix:
            continue
        if names is not None and key not in names:
            found.append(prefix + key)
            continue
        node = cfg._get_node(key)
        if isinstance(node, (DictConfig, ListConfig)):
            found += unknown_keys(node, f"{prefix}{key}.")
    return found


def suggestion(key: str, valid: list[str]) -> Optional[str]:
    """The valid dotted key nearest to ``key``: a near miss at the same level, else the same name elsewhere."""
    parent, _, leaf = key.rpartition(".")
    siblings = [p.rpartition(".")[2] for p in valid if p.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if close:
        return f"{parent}.{close[0]}" if parent else close[0]
    same_name = [p for p in valid if p.rpartition(".")[2] == leaf]
    if same_name:
        return same_name[0]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.75)
    return close[0] if close else None


def check_keys(cfg: Any, schema: Optional[type] = None) -> None:
    """Raise :class:`ConfigError` listing every key of ``cfg`` that its schema does not have."""
    bad = unknown_keys(cfg)
    if not bad:
        return
    schema = schema or OmegaConf.get_type(cfg)
    valid = list(schema_paths(schema)) if dataclasses.is_dataclass(schema) else []
    moved: dict[str, str] = getattr(schema, "MOVED_KEYS", {}) or {}
    lines = []
    for key in bad:
        if key in moved:
            lines.append(f"{key}: {moved[key]}")
            continue
        hint = suggestion(key, valid)
        lines.append(f"{key}: unknown key" + (f"; did you mean {hint}?" if hint else ""))
    what = "an unknown key" if len(bad) == 1 else f"{len(bad)} unknown keys"
    raise ConfigError(f"config has {what} (see --help for the valid ones):\n  " + "\n  ".join(lines))
