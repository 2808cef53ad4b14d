"""One adapter per Hugging Face architecture family: what differs between Llama, Mistral, Qwen2 and Qwen3.

:mod:`nemo_minitron.interop.hf` translates the fields every Llama-style family shares; a
:class:`Family` says what its ``model_type`` adds: the transformers class, whether it has qk-norm,
which linear biases it carries (and which ``config.json`` keys say so), its sliding-window keys,
and the extra keys of an exported ``config.json``. Adding a family is one subclass registered with
:func:`register` (plus a test converting a tiny random model of it, see CONTRIBUTING).
"""

from __future__ import annotations

from typing import Any, Callable

from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.logging import get_logger

log = get_logger(__name__)

#: model_type -> its adapter.
FAMILIES: dict[str, "Family"] = {}


def _get(hf: Any, key: str, default: Any = None) -> Any:
    return hf.get(key, default) if isinstance(hf, dict) else getattr(hf, key, default)


def register(cls: type["Family"]) -> type["Family"]:
    """Class decorator: make a :class:`Family` available under its ``model_type``."""
    FAMILIES[cls.model_type] = cls()
    return cls


def family(model_type: Any, what: str = "config.json model_type") -> "Family":
    """The adapter for ``model_type``; :class:`ConfigError` naming ``what`` when there is none."""
    if model_type not in FAMILIES:
        raise ConfigError(f"{what}={model_type!r} is not supported; supported: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


class Family:
    """A Llama-style family without linear biases or qk-norm (subclasses override what differs)."""

    model_type: str = ""
    """Hugging Face ``model_type``."""
    architecture: str = ""
    """transformers class name written to ``architectures``."""
    qk_layernorm: bool = False
    """Whether the family normalises queries and keys per head."""
    rope_scaling: bool = False
    """Whether the family's config carries Llama-3 RoPE scaling."""

    # ---------------------------------------------------------------- import (config.json -> ModelConfig)
    def biases(self, hf: Any) -> tuple[bool, bool]:
        """``(add_qkv_bias, add_bias_linear)`` from ``config.json``; unsupported combinations raise."""
        if _get(hf, "attention_bias", False):
            raise ConfigError(f"config.json attention_bias=true (with mlp_bias={_get(hf, 'mlp_bias', False)}) "
                              f"is not supported for model_type={self.model_type}")
        return False, False

    def check_import(self, hf: Any) -> None:
        """Refuse (or warn about) features of ``config.json`` the megatron model does not reproduce."""

    # ---------------------------------------------------------------- export (ModelConfig -> config.json)
    def check_export(self, cfg: ModelConfig, need: Callable[[bool, str], None]) -> None:
        """Family-specific conditions for exporting ``cfg`` (``need(condition, message)``)."""
        need(not cfg.add_qkv_bias and not cfg.add_bias_linear, "linear biases are not supported")

    def export_keys(self, cfg: ModelConfig) -> dict[str, Any]:
        """Keys of the exported config beyond the shared ones."""
        return {}


@register
class Llama(Family):
    """LlamaForCausalLM: optional biases on every linear (``attention_bias`` and ``mlp_bias`` together)."""

    model_type, architecture, rope_scaling = "llama", "LlamaForCausalLM", True

    def biases(self, hf: Any) -> tuple[bool, bool]:  # noqa: D102
        if _get(hf, "attention_bias", False):
            if _get(hf, "mlp_bias", False):
                return False, True
            return super().biases(hf)
        return False, False

    def check_export(self, cfg, need):  # noqa: D102
        need(not cfg.add_qkv_bias or cfg.add_bias_linear, "model.add_qkv_bias=true alone needs model_type=qwen2")

    def export_keys(self, cfg):  # noqa: D102
        return {"attention_bias": cfg.add_bias_linear, "mlp_bias": cfg.add_bias_linear}


@register
class Mistral(Family):
    """MistralForCausalLM: Llama without biases; honours ``head_dim``; a sliding window is ignored (full attention)."""

    model_type, architecture, rope_scaling = "mistral", "MistralForCausalLM", True

    def check_import(self, hf):  # noqa: D102
        window = _get(hf, "sliding_window")
        if window:
            log.warning("config.json sliding_window=%s is ignored: the megatron model attends to the full context "
                        "(identical results only for sequences up to %s tokens)", window, window)

    def export_keys(self, cfg):  # noqa: D102
        return {"sliding_window": None}


@register
class Qwen2(Family):
    """Qwen2ForCausalLM: a bias on the QKV projection only; no sliding window."""

    model_type, architecture = "qwen2", "Qwen2ForCausalLM"

    def biases(self, hf):  # noqa: D102
        return True, False

    def check_import(self, hf):  # noqa: D102
        if _get(hf, "use_sliding_window", False):
            raise ConfigError("config.json use_sliding_window=true is not supported (megatron uses full attention)")

    def check_export(self, cfg, need):  # noqa: D102
        need(cfg.add_qkv_bias and not cfg.add_bias_linear, "Qwen2 has a QKV bias and no other linear bias")

    def export_keys(self, cfg):  # noqa: D102
        return {"use_sliding_window": False, "sliding_window": None}


@register
class Qwen3(Family):
    """Qwen3ForCausalLM: per-head RMSNorm of queries and keys (qk-norm), no biases."""

    model_type, architecture, qk_layernorm = "qwen3", "Qwen3ForCausalLM", True

    def export_keys(self, cfg):  # noqa: D102
        return {"attention_bias": False, "use_sliding_window": False, "sliding_window": None}


def infer_model_type(cfg: ModelConfig) -> str:
    """The Hugging Face model_type that can represent ``cfg``: qwen3 (qk-norm), qwen2 (QKV bias) or llama."""
    if cfg.qk_layernorm:
        return Qwen3.model_type
    if cfg.add_qkv_bias and not cfg.add_bias_linear:
        return Qwen2.model_type
    return Llama.model_type
