"""Forward-only passes through a (possibly TP/PP-split) GPT model with megatron-core's schedules.

:func:`forward_logits` is what evaluation, importance estimation checks and conversion tests use:
it runs the pipeline schedule over micro-batches, gathers the vocab-parallel logits over TP and
hands the full ``[batch, seq, vocab]`` tensor to every rank (broadcast from the last stage).
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.distributed as dist


def _position_ids(tokens: torch.Tensor) -> torch.Tensor:
    return torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)


def gather_vocab_parallel(logits: torch.Tensor, tp_group=None) -> torch.Tensor:
    """Concatenate the TP shards of vocab-parallel logits along the last dimension."""
    from megatron.core import parallel_state as ps

    group = tp_group if tp_group is not None else ps.get_tensor_model_parallel_group()
    world = dist.get_world_size(group)
    if world == 1:
        return logits
    parts = [torch.empty_like(logits) for _ in range(world)]
    dist.all_gather(parts, logits.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


@torch.no_grad()
def forward_logits(model: torch.nn.Module, tokens: torch.Tensor, micro_batch_size: Optional[int] = None) -> torch.Tensor:
    """Full-vocabulary logits ``[batch, seq, vocab]`` (fp32) for ``tokens``, on every rank.

    ``tokens`` must be the same on every rank. Works for any TP/PP layout the model was built with.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    was_training = model.training
    model.eval()
    batch, seq = tokens.shape
    mbs = micro_batch_size or batch
    if batch % mbs:
        raise ValueError(f"batch size {batch} is not divisible by micro_batch_size={mbs}")
    device = next(model.parameters()).device
    chunks = list(tokens.to(device).split(mbs))

    def forward_step(data_iter: Iterator[torch.Tensor], module: torch.nn.Module):
        mb = next(data_iter)
        out = module(mb, _position_ids(mb), None)

        def collect(output: torch.Tensor):
            return output.new_zeros(()), {"logits": output.detach()}

        return out, collect

    results = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(chunks),
        model=model,
        num_microbatches=len(chunks),
        seq_length=seq,
        micro_batch_size=mbs,
        forward_only=True,
    )
    if ps.is_pipeline_last_stage():
        logits = torch.cat([gather_vocab_parallel(r["logits"].float()) for r in results], dim=0)
        vocab = logits.shape[-1]
    else:
        vocab = 0
    if ps.get_pipeline_model_parallel_world_size() > 1:
        src = ps.get_pipeline_model_parallel_last_rank()
        size = torch.tensor([vocab], dtype=torch.long, device=device)
        dist.broadcast(size, src=src, group=ps.get_pipeline_model_parallel_group())
        if not ps.is_pipeline_last_stage():
            logits = torch.empty(batch, seq, int(size.item()), dtype=torch.float32, device=device)
        dist.broadcast(logits, src=src, group=ps.get_pipeline_model_parallel_group())
    model.train(was_training)
    return logits
