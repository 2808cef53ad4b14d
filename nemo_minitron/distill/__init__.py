"""Knowledge distillation: KD losses, the frozen teacher and the student+teacher pipeline stage."""

from nemo_minitron.distill.losses import (
    balance_losses,
    hidden_state_loss,
    logit_kl,
    masked_mean,
    vocab_parallel_logit_kl,
)

__all__ = ["balance_losses", "hidden_state_loss", "logit_kl", "masked_mean", "vocab_parallel_logit_kl"]
