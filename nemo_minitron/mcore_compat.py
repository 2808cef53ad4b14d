"""The one place that knows about differences between megatron-core releases.

Tested (``scripts/test.sh``): megatron-core 0.15.3 (the NeMo 25.11 / 26.02 generation, transformers 4.57),
0.16.1 (primary CI stack) and 0.19.2 (newest, Python 3.12). Everything here adapts to the installed version by
inspecting signatures and fields, never by assuming them:

* :func:`make_transformer_config` drops keyword arguments that the installed ``TransformerConfig``
  does not know (and refuses to silently drop one that was set to a non-default value);
* :func:`layer_spec` picks the Transformer Engine or local GPT layer spec and passes only the
  keyword arguments the installed spec function accepts;
* :func:`have_transformer_engine` answers whether TE is importable (the TE spec function itself
  imports without TE but fails when called);
* :func:`distopt_bucket_step_unsupported` answers whether the distributed optimizer's ``dp_reshardable``
  bucket state chokes on torch Adam's 0-dim ``step`` (megatron-core 0.15.x; 0.16+ keeps it out of the buckets).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import re
from typing import Any, Callable

from nemo_minitron.logging import get_logger

log = get_logger(__name__)


@functools.lru_cache(maxsize=None)
def mcore_version() -> tuple[int, int, int]:
    """Installed megatron-core version as ``(major, minor, patch)``."""
    from megatron.core import package_info

    return parse_version(package_info.__shortversion__)


def parse_version(text: str) -> tuple[int, int, int]:
    """``"0.15.0rc7"`` / ``"0.16.1"`` / ``"0.19.0.dev0+abc"`` -> ``(major, minor, patch)`` (pre-release tags dropped)."""
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise ValueError(f"cannot read a megatron-core version from {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


@functools.lru_cache(maxsize=None)
def have_transformer_engine() -> bool:
    """True when Transformer Engine can be imported (and so its layer spec can be built)."""
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as exc:  # pragma: no cover - broken TE install
        log.warning("transformer_engine is installed but fails to import (%s); using the local spec", exc)
        return False
    return True


def _call_with_supported_kwargs(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Call ``fn`` with the subset of ``kwargs`` its signature accepts; fail if a truthy one is dropped."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    dropped = {k: v for k, v in kwargs.items() if k not in params}
    bad = {k: v for k, v in dropped.items() if v not in (None, False)}
    if bad:
        raise TypeError(f"{fn.__qualname__} of megatron-core {mcore_version()} does not support {sorted(bad)}")
    return fn(**{k: v for k, v in kwargs.items() if k in params})


def make_transformer_config(**kwargs: Any) -> Any:
    """``TransformerConfig(**kwargs)`` restricted to fields the installed megatron-core has."""
    from megatron.core.transformer import TransformerConfig

    fields = {f.name: f for f in dataclasses.fields(TransformerConfig)}
    unknown = {k: v for k, v in kwargs.items() if k not in fields}
    for key, value in unknown.items():
        raise TypeError(f"TransformerConfig of megatron-core {mcore_version()} has no field {key!r} (value {value!r})")
    return TransformerConfig(**kwargs)


def layer_spec(use_te: bool, qk_layernorm: bool, normalization: str) -> Any:
    """The GPT layer ``ModuleSpec``: Transformer Engine when ``use_te``, else megatron-core's local modules."""
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if use_te:
        return _call_with_supported_kwargs(specs.get_gpt_layer_with_transformer_engine_spec, qk_layernorm=qk_layernorm)
    return _call_with_supported_kwargs(
        specs.get_gpt_layer_local_spec, qk_layernorm=qk_layernorm, normalization=normalization
    )


@functools.lru_cache(maxsize=None)
def distopt_bucket_step_unsupported() -> bool:
    """True when ``DistributedOptimizer``'s ``dp_reshardable`` sharded state cannot hold a 0-dim Adam ``step``.

    The bucket state of every parameter is ``{"param", **optimizer.state[param]}``; with torch's Adam (no
    apex / Transformer Engine) that includes a 0-dim ``step`` tensor. megatron-core 0.16+ wraps it as a local,
    non-persistent object (the step is saved through the parameter groups); 0.15.x asserts that every entry
    is a 1-D bucket slice and fails on save and load. Read from the installed method's source; the version
    decides only where the source is unavailable.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    try:
        src = inspect.getsource(DistributedOptimizer.sharded_param_state_dp_reshardable)
    except (OSError, TypeError, AttributeError):  # pragma: no cover - compiled or renamed
        return mcore_version() < (0, 16, 0)
    return re.search(r"""key\s*==\s*['"]step['"]""", src) is None


def gpt_model_class() -> type:
    """The GPT model class. Kept here so a move to ``HybridModel`` in newer Megatron is a local change."""
    from megatron.core.models.gpt import GPTModel

    return GPTModel
