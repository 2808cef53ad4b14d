"""Analytic parameter counts of a :class:`~nemo_minitron.config.model.ModelConfig`.

No model is built. The formula follows Minitron (arXiv 2407.14679) §5.3, extended for biases,
qk-norm, LayerNorm biases and learned absolute positions:

``P = V·h·(1 if tied else 2) + L·[attn + mlp + norms] + final_norm``
"""

from __future__ import annotations

from dataclasses import dataclass

from nemo_minitron.config.model import ModelConfig


@dataclass(frozen=True)
class ParamCount:
    """Parameter count broken down the way model cards report it."""

    total: int
    embedding: int
    """Input embedding + untied output matrix + learned position table."""
    non_embedding: int
    per_layer: int
    attention_per_layer: int
    mlp_per_layer: int

    def to_dict(self) -> dict[str, int]:
        """Plain dict (for JSON)."""
        return {
            "num_parameters": self.total,
            "embedding_parameters": self.embedding,
            "non_embedding_parameters": self.non_embedding,
            "per_layer_parameters": self.per_layer,
            "attention_parameters_per_layer": self.attention_per_layer,
            "mlp_parameters_per_layer": self.mlp_per_layer,
        }


def count_parameters(cfg: ModelConfig) -> ParamCount:
    """Exact parameter count of the megatron-core GPTModel that ``cfg`` describes (unpadded vocab)."""
    h, f, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim
    nh, ng, L, V = cfg.num_attention_heads, cfg.query_groups, cfg.num_layers, cfg.vocab_size
    norm_params = 2 * h if cfg.normalization == "LayerNorm" else h

    qkv_out = (nh + 2 * ng) * d
    attn = h * qkv_out + nh * d * h
    if cfg.add_bias_linear or cfg.add_qkv_bias:
        attn += qkv_out
    if cfg.add_bias_linear:
        attn += h
    if cfg.qk_layernorm:
        attn += 2 * (2 * d if cfg.normalization == "LayerNorm" else d)

    fc1_out = 2 * f if cfg.gated_linear_unit else f
    mlp = h * fc1_out + f * h
    if cfg.add_bias_linear:
        mlp += fc1_out + h

    per_layer = attn + mlp + 2 * norm_params
    embedding = V * h * (1 if cfg.share_embeddings_and_output_weights else 2)
    if cfg.position_embedding_type == "learned_absolute":
        embedding += cfg.max_position_embeddings * h
    non_embedding = L * per_layer + norm_params
    return ParamCount(
        total=embedding + non_embedding,
        embedding=embedding,
        non_embedding=non_embedding,
        per_layer=per_layer,
        attention_per_layer=attn,
        mlp_per_layer=mlp,
    )
