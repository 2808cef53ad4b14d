"""Fiddle's JSON serialisation (format version 0.0.1) written and read without fiddle or NeMo installed.

NeMo 2 stores the Python objects that make up a checkpoint's context (``TrainerContext(model=...,
trainer=..., extra=...)``) in ``context/io.json`` as a fiddle ``Config`` graph; every NeMo entry point
(``io.load_context``, ``llm.export_ckpt``, ``llm.prune``, ``llm.distill``) reads only that file. This
module covers the subset such a context needs:

* :class:`Call` – a ``fdl.Config(target, **arguments)`` node (serialised with its
  ``BuildableTraverserMetadata``: the target as a pyref, the argument names, empty tags and history);
* :class:`PyRef` – a reference to a Python symbol (an activation function, a class);
* JSON leaves (``int``/``float``/``bool``/``str``/``None``) and empty dicts.

Object graphs are trees here (every node referenced once), so every object has one path.
:func:`read_fiddle_json` turns any fiddle JSON back into nested ``{"_target_": ..., **arguments}`` dicts
(also for files NeMo wrote, which hold more node types than we write).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Union

VERSION = "0.0.1"
_CONFIG = ("fiddle._src.config", "Config")
_METADATA = ("fiddle._src.config", "BuildableTraverserMetadata")


@dataclasses.dataclass(frozen=True)
class PyRef:
    """A Python symbol by its import path."""

    #: dotted module and symbol, e.g. ``torch.nn.functional.silu`` (the last component is the symbol)
    path: str

    @property
    def parts(self) -> tuple[str, str]:
        """``(module, symbol)``."""
        module, _, name = self.path.rpartition(".")
        return module, name


@dataclasses.dataclass
class Call:
    """``fdl.Config(target, **arguments)``: the target class or function and the arguments given to it."""

    #: dotted import path of the class or function to call
    target: str
    #: arguments by name: leaves, :class:`PyRef`, nested :class:`Call` or empty dicts
    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)


Value = Union[Call, PyRef, dict, int, float, bool, str, None]


def _pyref(module: str, name: str) -> dict[str, Any]:
    return {"type": "pyref", "module": module, "name": name}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[^_A-Z])(?=[A-Z])", "_", name).lower()


class _Writer:
    """Assigns object names and collects the ``objects`` table in dependency order."""

    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def name(self, base: str) -> str:
        self.counts[base] = self.counts.get(base, 0) + 1
        return f"{base}_{self.counts[base]}"

    def add(self, base: str, obj: dict[str, Any]) -> dict[str, Any]:
        key = self.name(base)
        self.objects[key] = obj
        return {"type": "ref", "key": key}

    def empty_dict(self, path: str | None = None) -> dict[str, Any]:
        obj = {"type": _pyref("builtins", "dict"), "items": [],
               "metadata": {"type": _pyref("builtins", "tuple"), "items": [], "metadata": None}}
        if path is not None:
            obj["paths"] = [path]
        return self.add("dict", obj)

    def value(self, v: Value, path: str) -> dict[str, Any]:
        if isinstance(v, Call):
            return self.call(v, path)
        if isinstance(v, PyRef):
            return {**_pyref(*v.parts), "paths": [path]}
        if isinstance(v, dict):
            if v:
                raise ValueError(f"{path}: only empty dicts are supported in a fiddle context, got {sorted(v)}")
            return self.empty_dict(path)
        if v is None or isinstance(v, (bool, int, float, str)):
            return {"type": "leaf", "value": v, "paths": [path]}
        raise TypeError(f"{path}: {type(v).__name__} values cannot be written to a fiddle context")

    def call(self, c: Call, path: str) -> dict[str, Any]:
        items = [[f"Attr(name='{k}')", self.value(v, f"{path}.{k}")] for k, v in c.arguments.items()]
        names = {"type": _pyref("builtins", "tuple"), "metadata": None,
                 "items": [[f"Index(index={i})", k] for i, k in enumerate(c.arguments)]}
        names_ref = self.add("tuple", names) if c.arguments else names
        meta = {"type": _pyref(*_METADATA), "metadata": _pyref(*_METADATA), "items": [
            ["Attr(name='fn_or_cls')", _pyref(*PyRef(c.target).parts)],
            ["Attr(name='argument_names')", names_ref],
            ["Attr(name='argument_tags')", self.empty_dict()],
            ["Attr(name='argument_history')", self.empty_dict()],
        ]}
        meta_ref = self.add("buildable_traverser_metadata", meta)
        return self.add(_snake(PyRef(c.target).parts[1]),
                        {"type": _pyref(*_CONFIG), "items": items, "metadata": meta_ref, "paths": [path]})


def fiddle_json(root: Call) -> dict[str, Any]:
    """The fiddle JSON document (as a dict) of the ``Config`` tree ``root``."""
    w = _Writer()
    ref = w.call(root, "<root>")
    return {"root": ref, "objects": w.objects, "refcounts": {k: 1 for k in w.objects}, "version": VERSION}


def dumps(root: Call) -> str:
    """:func:`fiddle_json` as text."""
    return json.dumps(fiddle_json(root), indent=2)


def read_fiddle_json(doc: dict[str, Any]) -> Any:
    """Nested plain values of a fiddle JSON document.

    ``Config`` nodes become ``{"_target_": ..., **args}``, pyrefs ``"module.name"`` strings, lists/tuples/dicts their Python counterparts.
    """
    objects = doc.get("objects", {})

    def conv(v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        kind = v.get("type")
        if kind == "ref":
            return conv(objects[v["key"]])
        if kind == "leaf":
            return v.get("value")
        if kind == "pyref":
            return f"{v['module']}.{v['name']}"
        if isinstance(kind, dict) and kind.get("type") == "pyref":
            tname = (kind["module"], kind["name"])
            items = v.get("items", [])
            if tname[1] in ("Config", "Partial") and tname[0].startswith("fiddle"):
                meta = conv(v.get("metadata"))
                target = meta.get("fn_or_cls") if isinstance(meta, dict) else None
                return {"_target_": target, **{_attr(k): conv(x) for k, x in items}}
            if tname[1] == "BuildableTraverserMetadata":
                return {_attr(k): conv(x) for k, x in items}
            if tname == ("builtins", "dict"):
                keys = conv(v.get("metadata")) or ()
                return {k: conv(x) for k, (_, x) in zip(keys, items)}
            if tname[0] == "builtins" and tname[1] in ("tuple", "list"):
                return [conv(x) for _, x in items]
            return {"_target_": f"{tname[0]}.{tname[1]}", **{_attr(k): conv(x) for k, x in items}}
        return v

    return conv(doc.get("root"))


def _attr(label: str) -> str:
    m = re.match(r"Attr\(name='([^']*)'\)", label) or re.match(r"Key\(key='([^']*)'\)", label)
    return m.group(1) if m else label
