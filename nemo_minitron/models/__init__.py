"""Model construction (megatron-core GPTModel) and analytic parameter counts."""
