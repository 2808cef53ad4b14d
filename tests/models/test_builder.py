"""The builder: megatron-core GPTModel matches the architecture, and the analytic count matches numel."""

import pytest
import torch

from nemo_minitron.models.builder import build_gpt_model, build_transformer_config, use_transformer_engine
from nemo_minitron.models.forward import forward_logits
from nemo_minitron.models.params import count_parameters

pytestmark = pytest.mark.compat

VARIANTS = {
    "llama": {},
    "tied": dict(share_embeddings_and_output_weights=True),
    "qwen2_qkv_bias": dict(add_qkv_bias=True),
    "qwen3_qk_norm": dict(qk_layernorm=True),
    "mistral_head_dim": dict(kv_channels=16, hidden_size=48, num_attention_heads=8),
    "mha_layernorm_gelu": dict(num_query_groups=None, normalization="LayerNorm", activation="gelu",
                               gated_linear_unit=False, add_bias_linear=True),
    "learned_pos": dict(position_embedding_type="learned_absolute"),
    "llama31_rope_scaling": dict(rope_scaling=True, rope_scaling_factor=8.0, rotary_base=500000.0),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_param_count_matches_built_model(world, tiny_cfg, variant):
    cfg = tiny_cfg.replace(**VARIANTS[variant])
    model = build_gpt_model(cfg)
    numel = sum(p.numel() for p in model.parameters())
    assert numel == count_parameters(cfg).total
    tokens = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    logits = forward_logits(model, tokens)
    assert logits.shape == (2, 12, cfg.vocab_size) and torch.isfinite(logits).all()


def test_transformer_config_mirrors_fields(world, tiny_cfg):
    cfg = tiny_cfg.replace(kv_channels=32, qk_layernorm=True, layernorm_epsilon=1e-6)
    tc = build_transformer_config(cfg)
    assert (tc.num_layers, tc.hidden_size, tc.ffn_hidden_size) == (4, 64, 128)
    assert (tc.num_attention_heads, tc.num_query_groups, tc.kv_channels) == (8, 4, 32)
    assert tc.qk_layernorm and tc.layernorm_epsilon == 1e-6 and tc.normalization == "RMSNorm"
    assert tc.params_dtype == torch.float32 and tc.use_cpu_initialization  # CPU defaults


def test_local_spec_on_cpu(tiny_cfg):
    assert use_transformer_engine(tiny_cfg) is False
    with pytest.raises(RuntimeError, match="transformer_impl=transformer_engine"):
        use_transformer_engine(tiny_cfg.replace(transformer_impl="transformer_engine"))


def test_causal(world, tiny_cfg):
    """Changing a later token must not change earlier logits (causal mask is applied)."""
    model = build_gpt_model(tiny_cfg)
    tokens = torch.randint(0, tiny_cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2))
    changed = tokens.clone()
    changed[0, 10] = (changed[0, 10] + 1) % tiny_cfg.vocab_size
    a, b = forward_logits(model, tokens), forward_logits(model, changed)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_layout_mismatch_is_refused(world, tiny_cfg):
    with pytest.raises(RuntimeError, match="tensor_model_parallel_size=2"):
        build_gpt_model(tiny_cfg.replace(tensor_model_parallel_size=2))


def test_performance_defaults_gpu_on_cpu_off(tiny_cfg):
    """Issue 9 deliver 3: SP, recompute and fusions default on for a GPU (TP>1 for SP) and off on CPU."""
    from nemo_minitron.models.builder import performance_settings

    tp2 = tiny_cfg.replace(tensor_model_parallel_size=2)
    cpu = performance_settings(tp2, on_gpu=False, use_te=False)
    assert not any(v for v in cpu.values()), cpu
    gpu = performance_settings(tp2, on_gpu=True, use_te=True)
    assert gpu["sequence_parallel"] and gpu["recompute_granularity"] == "selective"
    assert all(gpu[k] for k in ("bias_activation_fusion", "bias_dropout_fusion", "masked_softmax_fusion",
                                "apply_rope_fusion", "gradient_accumulation_fusion"))
    local = performance_settings(tp2, on_gpu=True, use_te=False)  # kernels only TE/apex provide stay off
    assert local["bias_activation_fusion"] and not local["apply_rope_fusion"] and not local["masked_softmax_fusion"]
    assert not local["gradient_accumulation_fusion"]
    assert not performance_settings(tiny_cfg, on_gpu=True, use_te=True)["sequence_parallel"]  # TP=1
    relu = performance_settings(tiny_cfg.replace(activation="relu"), on_gpu=True, use_te=True)
    assert not relu["bias_activation_fusion"]  # megatron-core only fuses gelu/silu
    full = performance_settings(tp2.replace(activations_checkpoint_granularity="full", fusions=False,
                                            sequence_parallel=False), on_gpu=True, use_te=True)
    assert (full["recompute_granularity"], full["recompute_method"], full["recompute_num_layers"]) == ("full",
                                                                                                        "uniform", 1)
    assert not full["sequence_parallel"] and not full["bias_dropout_fusion"]


def test_explicit_recompute_reaches_transformer_config(world, tiny_cfg):
    from nemo_minitron.config.model import ConfigError
    from nemo_minitron.models.builder import build_transformer_config

    tc = build_transformer_config(tiny_cfg.replace(activations_checkpoint_granularity="full",
                                                   activations_checkpoint_method="block",
                                                   activations_checkpoint_num_layers=2))
    assert (tc.recompute_granularity, tc.recompute_method, tc.recompute_num_layers) == ("full", "block", 2)
    assert tc.sequence_parallel is False and tc.bias_activation_fusion is False  # CPU defaults
    assert build_transformer_config(tiny_cfg).recompute_granularity is None  # auto = off on CPU
    with pytest.raises(ConfigError, match="activations_checkpoint_granularity"):
        tiny_cfg.replace(activations_checkpoint_granularity="some").validate()
