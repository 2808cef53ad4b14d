"""Model FLOPs of a GPT forward pass, the convention behind tokens/s -> MFU figures.

Counted: every matmul (2 FLOPs per multiply-add) of the attention projections, the MLP and the output
layer, plus the two attention matmuls (``QK^T`` and ``AV``) over the full ``seq x seq`` square (the
convention of Megatron-LM's and PaLM's MFU; causal masking is not subtracted). Not counted: norms,
activations, softmax, recomputation. Training a student costs three forward passes (forward, input
gradient, weight gradient); a frozen teacher costs one.
"""

from __future__ import annotations

from nemo_minitron.config.model import ModelConfig


def matmul_params_per_layer(cfg: ModelConfig) -> int:
    """Weights of one layer that take part in a matmul (QKV, attention output, MLP)."""
    h, f, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim
    qkv = h * (cfg.num_attention_heads + 2 * cfg.query_groups) * d
    proj = cfg.num_attention_heads * d * h
    mlp = h * f * (3 if cfg.gated_linear_unit else 2)
    return qkv + proj + mlp


def forward_flops_per_token(cfg: ModelConfig, seq_length: int) -> float:
    """FLOPs of one forward pass, per token, at sequence length ``seq_length``."""
    layers = cfg.num_layers * (2 * matmul_params_per_layer(cfg)
                               + 4 * seq_length * cfg.num_attention_heads * cfg.head_dim)
    return float(layers + 2 * cfg.hidden_size * cfg.vocab_size)


def distill_flops_per_token(student: ModelConfig, teacher: ModelConfig | None, seq_length: int) -> float:
    """FLOPs per trained token of a KD step: 3 student forwards (train) + 1 teacher forward (frozen)."""
    flops = 3 * forward_flops_per_token(student, seq_length)
    if teacher is not None:
        flops += forward_flops_per_token(teacher, seq_length)
    return flops


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOPs / peak FLOPs of the devices used."""
    return tokens_per_s * flops_per_token / peak_flops
