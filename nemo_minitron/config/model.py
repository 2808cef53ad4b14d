"""Plain, OmegaConf-friendly description of a GPT-style architecture and its parallel layout.

:class:`ModelConfig` mirrors the subset of megatron-core's ``TransformerConfig`` / ``GPTModel``
arguments that describe Llama, Mistral, Qwen2/3 and SmolLM2 style decoders. It holds only plain
types (no callables, no dtypes) so that it can live in Hydra YAML, a checkpoint's metadata file
and a pruning report. :func:`nemo_minitron.models.builder.build_transformer_config` is the one
place that turns it into megatron objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from nemo_minitron.models.names import ACTIVATIONS  # the table lives with the names

#: Fields that describe how a model is run, not what it is. They are excluded from
#: :meth:`ModelConfig.arch_dict`, so checkpoints saved at one layout load at another.
RUNTIME_FIELDS = (
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "precision",
    "transformer_impl",
    "sequence_parallel",
    "activations_checkpoint_granularity",
    "activations_checkpoint_method",
    "activations_checkpoint_num_layers",
    "fusions",
    "restore_from_path",
    "seed",
)

NORMALIZATIONS = ("RMSNorm", "LayerNorm")

POSITION_EMBEDDINGS = ("rope", "learned_absolute", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine")
RECOMPUTE_GRANULARITIES = ("auto", "selective", "full", None)
RECOMPUTE_METHODS = ("uniform", "block", None)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the offending key."""


@dataclass
class ModelConfig:
    """Architecture of a decoder-only GPT model plus the parallel layout to run it with."""

    name: str = "custom"
    """Human-readable preset name (informational only)."""

    num_layers: int = 4
    """Number of transformer blocks."""

    hidden_size: int = 64
    """Embedding / residual-stream width."""

    ffn_hidden_size: int = 256
    """MLP inner width (per branch for gated MLPs)."""

    num_attention_heads: int = 8
    """Number of query heads."""

    num_query_groups: Optional[int] = None
    """Number of key/value heads (GQA groups); null means multi-head attention (= num_attention_heads)."""

    kv_channels: Optional[int] = None
    """Head dimension; null means hidden_size / num_attention_heads. Mistral-NeMo uses 128 with hidden 5120 / 32 heads."""

    vocab_size: int = 256
    """Vocabulary size (rows of the embedding and output matrices)."""

    max_position_embeddings: int = 4096
    """Maximum sequence length the model supports."""

    normalization: str = "RMSNorm"
    """Norm type: RMSNorm or LayerNorm."""

    layernorm_epsilon: float = 1e-5
    """Epsilon of every norm."""

    activation: str = "silu"
    """MLP activation: silu, gelu, relu or squared_relu."""

    gated_linear_unit: bool = True
    """Gated MLP (SwiGLU when activation=silu): linear_fc1 produces [gate; up]."""

    position_embedding_type: str = "rope"
    """rope, learned_absolute or none."""

    rotary_base: float = 10000.0
    """RoPE theta."""

    rotary_percent: float = 1.0
    """Fraction of the head dimension that RoPE rotates."""

    rope_scaling: bool = False
    """Apply Llama-3.1 style RoPE frequency scaling (low 1, high 4, original context 8192)."""

    rope_scaling_factor: float = 8.0
    """Llama-3.x RoPE scaling factor (8 for Llama-3.1, 32 for Llama-3.2)."""

    share_embeddings_and_output_weights: bool = False
    """Tie the output projection to the input embedding."""

    add_qkv_bias: bool = False
    """Bias on the fused QKV projection only (Qwen2/2.5)."""

    add_bias_linear: bool = False
    """Bias on every linear layer (GPT-2 style)."""

    qk_layernorm: bool = False
    """Per-head norm on queries and keys (Qwen3)."""

    tensor_model_parallel_size: int = 1
    """Tensor-parallel size to run with (runtime; not part of the architecture)."""

    pipeline_model_parallel_size: int = 1
    """Pipeline-parallel size to run with (runtime; not part of the architecture)."""

    precision: str = "auto"
    """Parameter dtype: auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16."""

    transformer_impl: str = "auto"
    """Layer spec: auto (Transformer Engine when importable, else local), local or transformer_engine."""

    sequence_parallel: Optional[bool] = None
    """Sequence parallelism (NeMo key): split norms, dropouts and residuals along the sequence over TP ranks.
    null: on when a GPU is present and tensor_model_parallel_size > 1, off on CPU."""

    activations_checkpoint_granularity: Optional[str] = "auto"
    """Activation recompute (NeMo key): selective (core attention), full (whole layers) or null (off).
    auto: selective on a GPU, off on CPU."""

    activations_checkpoint_method: Optional[str] = None
    """With granularity full: uniform (every activations_checkpoint_num_layers layers) or block (the first
    activations_checkpoint_num_layers layers of each stage). null means uniform."""

    activations_checkpoint_num_layers: Optional[int] = None
    """Layers per recompute chunk (uniform) or recomputed layers per stage (block) with granularity full; null means 1."""

    fusions: Optional[bool] = None
    """Fused kernels: bias-activation, bias-dropout, masked softmax, and with Transformer Engine also RoPE and
    gradient-accumulation fusion. null: on when a GPU is present, off on CPU (they need CUDA)."""

    restore_from_path: Optional[str] = None
    """Checkpoint to load (megatron dist-checkpoint directory written by nemo_minitron)."""

    seed: int = 1234
    """Seed for parameter initialisation and RNG trackers."""

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        """Head dimension (kv_channels or hidden/heads)."""
        return self.kv_channels if self.kv_channels is not None else self.hidden_size // self.num_attention_heads

    @property
    def query_groups(self) -> int:
        """Number of KV heads, resolving null to MHA."""
        return self.num_query_groups if self.num_query_groups is not None else self.num_attention_heads

    # ------------------------------------------------------------------ validation
    def validate(self, prefix: str = "model") -> "ModelConfig":
        """Check every cross-field rule; raise :class:`ConfigError` naming the key. Returns self."""

        def fail(msg: str) -> None:
            raise ConfigError(msg)

        from nemo_minitron.config.checks import layout_problems, positive_int

        for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "vocab_size",
                    "max_position_embeddings", "tensor_model_parallel_size", "pipeline_model_parallel_size"):
            positive_int(f"{prefix}.{key}", getattr(self, key))
        if self.normalization not in NORMALIZATIONS:
            fail(f"{prefix}.normalization={self.normalization!r} must be one of {list(NORMALIZATIONS)}")
        if self.activation not in ACTIVATIONS:
            fail(f"{prefix}.activation={self.activation!r} must be one of {list(ACTIVATIONS)}")
        if self.position_embedding_type not in POSITION_EMBEDDINGS:
            fail(f"{prefix}.position_embedding_type={self.position_embedding_type!r} must be one of "
                 f"{list(POSITION_EMBEDDINGS)}")
        if self.precision not in PRECISIONS:
            fail(f"{prefix}.precision={self.precision!r} must be one of {list(PRECISIONS)}")
        if self.transformer_impl not in TRANSFORMER_IMPLS:
            fail(f"{prefix}.transformer_impl={self.transformer_impl!r} must be one of {list(TRANSFORMER_IMPLS)}")
        if self.activations_checkpoint_granularity not in RECOMPUTE_GRANULARITIES:
            fail(f"{prefix}.activations_checkpoint_granularity={self.activations_checkpoint_granularity!r} must be "
                 "one of auto, selective, full or null")
        if self.activations_checkpoint_method not in RECOMPUTE_METHODS:
            fail(f"{prefix}.activations_checkpoint_method={self.activations_checkpoint_method!r} must be one of "
                 "uniform, block or null")
        if self.activations_checkpoint_num_layers is not None and self.activations_checkpoint_num_layers < 1:
            fail(f"{prefix}.activations_checkpoint_num_layers={self.activations_checkpoint_num_layers} must be positive")
        if self.num_query_groups is not None and (self.num_query_groups < 1
                                                  or self.num_attention_heads % self.num_query_groups):
            fail(f"{prefix}.num_attention_heads={self.num_attention_heads} is not a multiple of "
                 f"{prefix}.num_query_groups={self.num_query_groups}")
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            fail(f"{prefix}.hidden_size={self.hidden_size} is not divisible by {prefix}.num_attention_heads="
                 f"{self.num_attention_heads}; set {prefix}.kv_channels explicitly")
        if self.kv_channels is not None and self.kv_channels < 1:
            fail(f"{prefix}.kv_channels={self.kv_channels} must be positive")
        if self.layernorm_epsilon <= 0:
            fail(f"{prefix}.layernorm_epsilon={self.layernorm_epsilon} must be positive")
        problems = layout_problems(self, self.tensor_model_parallel_size, self.pipeline_model_parallel_size,
                                   prefix, prefix)
        if problems:
            fail(problems[0])
        return self

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict."""
        return dataclasses.asdict(self)

    def arch_dict(self) -> dict[str, Any]:
        """Architecture fields only (no parallel layout, precision, paths or name)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS and k != "name"}

    @classmethod
    def from_dict(cls, data: Any, strict: bool = True) -> "ModelConfig":
        """Build from a dict or DictConfig; unknown keys raise (strict) or are ignored."""
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(data, DictConfig):
                data = OmegaConf.to_container(data, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown and strict:
            raise ConfigError(f"unknown model config keys: {unknown}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def arch_diff(self, other: "ModelConfig") -> dict[str, tuple[Any, Any]]:
        """Architecture fields that differ: ``{key: (self_value, other_value)}``."""
        a, b = self.arch_dict(), other.arch_dict()
        return {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}


@dataclass
class LayoutConfig:
    """How a model is run (parallel layout, layer spec, seed), independent of what it is."""

    tensor_model_parallel_size: int = 1
    """Tensor-parallel size to run with (a checkpoint saved at one layout loads at any other)."""

    pipeline_model_parallel_size: int = 1
    """Pipeline-parallel size to run with."""

    transformer_impl: str = "auto"
    """Layer spec: auto (Transformer Engine when importable, else local), local or transformer_engine."""

    seed: int = 1234
    """Seed for parameter initialisation and RNG trackers."""

    sequence_parallel: Optional[bool] = None
    """Sequence parallelism (NeMo key); null: on when a GPU is present and TP > 1, off on CPU."""

    activations_checkpoint_granularity: Optional[str] = "auto"
    """Activation recompute (NeMo key): selective, full or null (off); auto: selective on a GPU, off on CPU."""

    activations_checkpoint_method: Optional[str] = None
    """With granularity full: uniform or block (null means uniform)."""

    activations_checkpoint_num_layers: Optional[int] = None
    """Layers per recompute chunk (uniform) or recomputed layers per stage (block); null means 1."""

    fusions: Optional[bool] = None
    """Fused kernels (bias-activation, bias-dropout; with TE also masked softmax, RoPE, gradient accumulation);
    null: on when a GPU is present, off on CPU."""


def apply_layout(block: Any, cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with every :class:`LayoutConfig` field (layout, spec, seed, performance settings) that ``block`` has.

    ``block`` is a recipe's ``model`` block: a :class:`LayoutConfig` subclass or a full :class:`ModelConfig`.
    """
    return cfg.replace(**{f.name: getattr(block, f.name) for f in dataclasses.fields(LayoutConfig)
                          if hasattr(block, f.name)})


@dataclass
class RuntimeModelConfig(LayoutConfig):
    """The ``model`` block of a recipe that reads the architecture from its checkpoint (prune).

    It has no architecture keys: ``model.hidden_size=...`` is refused instead of silently ignored.
    """

    restore_from_path: Optional[str] = None
    """Checkpoint to load (megatron dist-checkpoint directory written by nemo_minitron); its architecture is used."""

    precision: str = "auto"
    """Parameter dtype: auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16."""


def arch_fields() -> tuple[str, ...]:
    """Names of the :class:`ModelConfig` fields that describe the architecture (what a checkpoint fixes)."""
    return tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in RUNTIME_FIELDS and f.name != "name")


def field_docs() -> dict[str, str]:
    """Attribute docstrings of :class:`ModelConfig`, for ``--help`` style output."""
    import ast
    import inspect
    import textwrap

    src = textwrap.dedent(inspect.getsource(ModelConfig))
    tree = ast.parse(src).body[0]
    docs: dict[str, str] = {}
    body = tree.body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)  # type: ignore[union-attr]
    return docs

