"""Training on megatron-core: the trainer loop, LR schedule, train-state checkpoints and pre-emption."""
