"""Turn a :class:`~nemo_minitron.config.model.ModelConfig` into a megatron-core ``GPTModel``.

This is the only module that creates ``TransformerConfig`` objects. It chooses:

* the layer spec: Transformer Engine when importable and ``transformer_impl`` allows it, else the
  local megatron-core spec (the only option on CPU);
* the dtype: ``precision=auto`` means bf16 on a GPU and fp32 on the CPU (bf16 matmuls are ~50×
  slower on CPUs without native bf16);
* the pipeline stage: the embedding lives on the first stage and the output layer on the last;
* the performance features (:func:`performance_settings`): sequence parallelism, activation
  recompute and fused kernels, on by default on a GPU and off on the CPU.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from nemo_minitron import mcore_compat
from nemo_minitron.config.model import ModelConfig
from nemo_minitron.logging import get_logger
from nemo_minitron.models import names

log = get_logger(__name__)


def resolve_dtype(cfg: ModelConfig) -> torch.dtype:
    """Parameter dtype for ``cfg.precision`` on this machine."""
    if cfg.precision == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]


def use_transformer_engine(cfg: ModelConfig) -> bool:
    """Whether the Transformer Engine spec is used for ``cfg`` on this machine."""
    if cfg.transformer_impl == "local":
        return False
    have_te = mcore_compat.have_transformer_engine() and torch.cuda.is_available()
    if cfg.transformer_impl == "transformer_engine" and not have_te:
        raise RuntimeError("model.transformer_impl=transformer_engine but Transformer Engine/CUDA is not available")
    return have_te


def performance_settings(cfg: ModelConfig, on_gpu: bool, use_te: bool) -> dict[str, Any]:
    """``TransformerConfig`` performance fields for ``cfg`` on a GPU (``on_gpu``) or the CPU, with or without TE.

    null/auto values resolve to: sequence parallelism when ``on_gpu`` and TP > 1; selective recompute
    on a GPU; bias-dropout and bias-activation fusion (SwiGLU / GeLU, the activations megatron-core
    fuses) on a GPU, plus masked-softmax, RoPE and gradient-accumulation fusion with Transformer Engine
    (which provides those kernels; without it megatron-core would need apex builds). Explicit values
    are kept, except sequence parallelism, which needs TP > 1.
    """
    tp = cfg.tensor_model_parallel_size
    sp = (on_gpu and tp > 1) if cfg.sequence_parallel is None else bool(cfg.sequence_parallel)
    if sp and tp == 1:
        log.warning("model.sequence_parallel=true has no effect with tensor_model_parallel_size=1; turned off")
        sp = False
    granularity = cfg.activations_checkpoint_granularity
    if granularity == "auto":
        granularity = "selective" if on_gpu else None
    fuse = on_gpu if cfg.fusions is None else bool(cfg.fusions)
    out: dict[str, Any] = dict(
        sequence_parallel=sp,
        recompute_granularity=granularity,
        recompute_method=None,
        recompute_num_layers=None,
        bias_activation_fusion=fuse and ((cfg.activation == "silu" and cfg.gated_linear_unit)
                                         or (cfg.activation == "gelu" and (cfg.gated_linear_unit or cfg.add_bias_linear))),
        bias_dropout_fusion=fuse,
        masked_softmax_fusion=fuse and use_te,
        apply_rope_fusion=fuse and use_te,
        gradient_accumulation_fusion=fuse and use_te,
        persist_layer_norm=False,
    )
    if granularity == "full":
        out["recompute_method"] = cfg.activations_checkpoint_method or "uniform"
        out["recompute_num_layers"] = cfg.activations_checkpoint_num_layers or 1
    return out


def build_transformer_config(cfg: ModelConfig, **overrides: Any) -> Any:
    """megatron-core ``TransformerConfig`` for ``cfg`` (validated first). ``overrides`` win."""
    cfg.validate()
    dtype = resolve_dtype(cfg)
    on_cpu = not torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        kv_channels=cfg.head_dim,
        normalization=cfg.normalization,
        layernorm_epsilon=cfg.layernorm_epsilon,
        activation_func=names.activation_function(cfg.activation),
        gated_linear_unit=cfg.gated_linear_unit,
        add_bias_linear=cfg.add_bias_linear,
        add_qkv_bias=cfg.add_qkv_bias,
        qk_layernorm=cfg.qk_layernorm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=cfg.tensor_model_parallel_size,
        pipeline_model_parallel_size=cfg.pipeline_model_parallel_size,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        # CPU init makes weights identical for every TP size and is the only option without CUDA.
        use_cpu_initialization=on_cpu,
        **performance_settings(cfg, on_gpu=not on_cpu, use_te=use_transformer_engine(cfg)),
    )
    kwargs.update(overrides)
    return mcore_compat.make_transformer_config(**kwargs)


def build_gpt_model(
    cfg: ModelConfig,
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
    **config_overrides: Any,
) -> torch.nn.Module:
    """Build this rank's stage of the GPT model described by ``cfg``.

    Model-parallel state must be initialised first (:func:`nemo_minitron.runtime.init_model_parallel`)
    with the TP/PP sizes in ``cfg``. ``pre_process``/``post_process`` default to whether this rank
    is the first/last pipeline stage.
    """
    from megatron.core import parallel_state as ps

    tp, pp = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    if (tp, pp) != (cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size):
        raise RuntimeError(
            f"model parallel state is TP={tp} PP={pp} but model.tensor_model_parallel_size="
            f"{cfg.tensor_model_parallel_size}, model.pipeline_model_parallel_size={cfg.pipeline_model_parallel_size}"
        )
    tconf = build_transformer_config(cfg, **config_overrides)
    use_te = use_transformer_engine(cfg)
    spec = mcore_compat.layer_spec(use_te, cfg.qk_layernorm, cfg.normalization)
    model_cls = mcore_compat.gpt_model_class()
    model = model_cls(
        config=tconf,
        transformer_layer_spec=spec,
        vocab_size=cfg.vocab_size,
        max_sequence_length=cfg.max_position_embeddings,
        pre_process=ps.is_pipeline_first_stage() if pre_process is None else pre_process,
        post_process=ps.is_pipeline_last_stage() if post_process is None else post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=cfg.share_embeddings_and_output_weights,
        position_embedding_type=cfg.position_embedding_type,
        rotary_percent=cfg.rotary_percent,
        rotary_base=cfg.rotary_base,
        rope_scaling=cfg.rope_scaling,
        rope_scaling_factor=cfg.rope_scaling_factor,
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    log.debug("built %s stage (TE spec: %s, dtype %s)", cfg.name, use_te, tconf.params_dtype)
    return model
