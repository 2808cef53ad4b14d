"""``--help`` of every entry point: the keys of its typed schema, their values and their docstrings.

The text is built from the schema dataclasses (one home per fact): each field's attribute docstring is
its help line, so a key that is not in the schema cannot be listed and every listed key is read by the
entry point.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import typing
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal after each field) of a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        except (OSError, TypeError):  # pragma: no cover - source not available
            continue
        body = tree.body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def schema_rows(schema: type, prefix: str = "") -> Iterator[tuple[str, Optional[str], str, bool]]:
    """(dotted key, type name, docstring, is_section) for every field of ``schema``, depth first."""
    hints = typing.get_type_hints(schema)
    docs = field_docs(schema)
    for f in dataclasses.fields(schema):
        hint = hints.get(f.name)
        path = prefix + f.name
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            yield path, None, docs.get(f.name, ""), True
            yield from schema_rows(hint, path + ".")
        else:
            yield path, _type_name(hint), docs.get(f.name, ""), False


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        return _type_name(args[0]) + "|null"
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _value(cfg: Optional[DictConfig], path: str) -> str:
    if cfg is None:
        return ""
    node: Any = cfg
    for part in path.split("."):
        node = node._get_node(part) if isinstance(node, DictConfig) else None
        if node is None:
            return ""
    if node._is_missing():
        return "??? (required)"
    value = OmegaConf.to_container(node) if isinstance(node, (DictConfig, ListConfig)) else node._value()
    return json.dumps(value) if isinstance(value, (bool, type(None), list, dict)) else str(value)


def schema_of(config_name: str) -> type:
    """The schema dataclass of the primary config ``conf/<config_name>.yaml`` (composed with its defaults)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from nemo_minitron.paths import conf_dir

    if GlobalHydra.instance().is_initialized():
        from hydra.compose import compose as compose_here

        return OmegaConf.get_type(compose_here(config_name))
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        return OmegaConf.get_type(compose(config_name))


def help_text(config_name: str, cfg: Optional[DictConfig] = None) -> str:
    """The help page of ``conf/<config_name>.yaml``; values from ``cfg`` (the composed config) if given."""
    schema = OmegaConf.get_type(cfg) if cfg is not None else None
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        schema = schema_of(config_name)
    doc = " ".join((schema.__doc__ or "").split())
    lines = [f"{config_name} - {doc}", "",
             "Set keys as key=value (nested: section.key=value). Defaults come from conf/"
             f"{config_name}.yaml over the schema {schema.__module__}.{schema.__name__}.", "",
             "Keys (current value, type, meaning):"]
    for path, type_name, text, section in schema_rows(schema):
        depth = path.count(".")
        indent = "  " * depth
        name = path.rpartition(".")[2]
        if section:
            lines.append(f"{indent}{name}:  # {text}" if text else f"{indent}{name}:")
            continue
        value = _value(cfg, path)
        lines.append(f"{indent}{name}: {value}" + (f"  ({type_name})" if type_name else ""))
        if text:
            lines += [f"{indent}    {t}" for t in textwrap.wrap(text, 100 - len(indent))]
    lines += ["", "Hydra - --cfg job prints the composed config; --hydra-help lists Hydra's own options."]
    return "\n".join(lines).replace("$", "$$")
