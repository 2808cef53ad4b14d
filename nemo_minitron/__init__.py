"""nemo_minitron: Minitron pruning and distillation of GPT models on megatron-core.

Importing this package is cheap and needs neither megatron-core's optional extras (apex,
Transformer Engine) nor NeMo; megatron-core itself is imported lazily by the modules that use it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
