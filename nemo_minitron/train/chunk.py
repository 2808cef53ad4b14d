"""What the one optimizer trains: this rank's student stage plus the loss object's own parameters.

:class:`TrainedChunk` is the module megatron's ``DistributedDataParallel`` wraps. Its forward is the
student's; the loss object (:mod:`nemo_minitron.distill.objective`) is a submodule, so parameters it
owns (e.g. the projection of an intermediate-state loss) sit in the same gradient buffers, are reduced
over data-parallel ranks with the student's, count in the global gradient norm and clip, live in the
distributed optimizer's state, and are checkpointed with it. The student's sharded state keeps its own
keys; the loss's parameters are added under :data:`LOSS_PREFIX`.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.module import MegatronModule

#: Prefix of the loss object's entries in the chunk's sharded state (optimizer and ``loss/`` checkpoints).
LOSS_PREFIX = "training_loss."


def loss_sharded_state(loss: torch.nn.Module, prefix: str = "", metadata=None) -> dict:
    """The loss object's sharded state: its own ``sharded_state_dict`` or its tensors, replicated over TP and DP."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing import ShardedTensor

    prefix = f"{prefix}{LOSS_PREFIX}"
    if hasattr(loss, "sharded_state_dict"):
        return loss.sharded_state_dict(prefix=prefix, sharded_offsets=(), metadata=metadata)
    # one copy per (PP stage, TP rank 0, DP rank 0) is the main replica; the others are replicas of it
    replica = (0, ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank(with_context_parallel=True))
    return {f"{prefix}{name}": ShardedTensor.from_rank_offsets(f"{prefix}{name}", t, replica_id=replica)
            for name, t in loss.state_dict(keep_vars=True).items() if torch.is_tensor(t)}


class TrainedChunk(MegatronModule):
    """``student`` (this rank's GPT stage) and ``loss`` as one megatron model chunk."""

    def __init__(self, student: torch.nn.Module, loss: torch.nn.Module):
        super().__init__(config=student.config)
        self.module = student  # megatron and DistillationStage reach the GPT model through .module
        self.loss = loss

    def forward(self, *args, **kwargs):
        """The student's forward."""
        return self.module(*args, **kwargs)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None) -> dict:
        """The student's sharded state (its own keys) plus the loss object's under :data:`LOSS_PREFIX`."""
        state = self.module.sharded_state_dict(prefix=prefix, sharded_offsets=sharded_offsets, metadata=metadata)
        state.update(loss_sharded_state(self.loss, prefix, metadata))
        return state
