"""The forward-only engine: one loop for calibration, validation and evaluation, and one perplexity.

Every forward-only pass goes through :func:`run_forward`, which drives megatron-core's pipeline
schedule (``forward_only=True``) over micro-batches, so it works at any TP/PP layout. A pass asks
for one of three outputs:

* ``"none"``: nothing is collected (calibration; statistics come from ``hooks`` / ``before_step``);
* ``"logits"``: full-vocabulary fp32 logits (vocab-parallel shards gathered over TP);
* ``"loss"``: summed next-token cross-entropy over the positions whose ``loss_mask`` is set,
  computed inside the model from ``labels`` (megatron's vocab-parallel cross-entropy, exact
  under TP without materialising full-vocabulary logits).

:func:`perplexity` is the only perplexity definition in the package: ``exp`` of the token-weighted
mean next-token loss in nats, ``inf`` when that overflows a double (never a clamped value).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist

OUTPUTS = ("none", "logits", "loss")


def perplexity(loss: float) -> float:
    """``exp(loss)`` for a mean next-token loss in nats; ``inf`` on overflow, ``nan`` for ``nan``."""
    if math.isnan(loss):
        return math.nan
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@dataclass
class LossSums:
    """Summed next-token negative log-likelihood over the positions that count (same on every rank)."""

    nll: float
    """Sum of the per-token cross-entropy (nats) over positions whose ``loss_mask`` is set."""

    tokens: float
    """Number of positions that count."""

    @property
    def loss(self) -> float:
        """Token-weighted mean loss (nats per token); ``nan`` when no position counts."""
        return self.nll / self.tokens if self.tokens else math.nan

    @property
    def ppl(self) -> float:
        """:func:`perplexity` of :attr:`loss`."""
        return perplexity(self.loss)

    def to_dict(self) -> dict:
        """``{"loss", "ppl", "tokens"}`` for reports."""
        return {"loss": self.loss, "ppl": self.ppl, "tokens": int(self.tokens)}


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


def window_batches(tokens: torch.Tensor, mask: Optional[torch.Tensor], micro_batch_size: int) -> list[dict]:
    """LM micro-batches from token windows ``[N, L]``: predict token ``t + 1`` from ``0..t``.

    A target counts when both it and its preceding token are valid in ``mask`` (True = valid),
    so a window's loss never crosses a document boundary the mask marks.
    """
    if mask is None:
        mask = torch.ones_like(tokens, dtype=torch.bool)
    mask = mask.bool()
    out = []
    for i in range(0, tokens.shape[0], micro_batch_size):
        tok, msk = tokens[i:i + micro_batch_size], mask[i:i + micro_batch_size]
        out.append({"tokens": tok[:, :-1].contiguous(), "labels": tok[:, 1:].contiguous(),
                    "loss_mask": (msk[:, 1:] & msk[:, :-1]).float()})
    return out


def _same_size_groups(batches: Sequence[dict]) -> list[list[dict]]:
    """Consecutive runs of micro-batches with one shape (one schedule call needs one micro-batch size)."""
    groups: list[list[dict]] = []
    for b in batches:
        if groups and groups[-1][0]["tokens"].shape == b["tokens"].shape:
            groups[-1].append(b)
        else:
            groups.append([b])
    return groups


@contextlib.contextmanager
def _registered(hooks: Optional[Iterable[tuple[torch.nn.Module, Callable]]]):
    handles = [module.register_forward_hook(fn) for module, fn in (hooks or ())]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def run_forward(model, micro_batches: Sequence[dict], output: str = "none", *,
                hooks: Optional[Iterable[tuple[torch.nn.Module, Callable]]] = None,
                before_step: Optional[Callable[[dict], None]] = None) -> list:
    """Forward ``micro_batches`` through ``model`` (this rank's pipeline stage) in eval mode. Collective.

    Each micro-batch is a dict with ``tokens`` ``[b, s]`` and, for ``output="loss"``, ``labels``
    and ``loss_mask``; ``position_ids`` default to ``0..s-1``. ``hooks`` are ``(module, forward
    hook)`` pairs registered for this pass only; ``before_step`` sees each micro-batch (moved to
    the model's device) just before its forward. Returns, on the last pipeline stage, one entry per
    micro-batch: ``None`` (``"none"``), gathered fp32 logits ``[b, s, V]`` (``"logits"``) or a
    float64 tensor ``[nll_sum, count]`` (``"loss"``); other stages get an empty list.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if output not in OUTPUTS:
        raise ValueError(f"output={output!r} must be one of {list(OUTPUTS)}")
    modules = model if isinstance(model, list) else [model]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    device = next(modules[0].parameters()).device

    def forward_step(data_iter: Iterator[dict], module: torch.nn.Module):
        mb = {k: v.to(device) for k, v in next(data_iter).items() if isinstance(v, torch.Tensor)}
        if before_step is not None:
            before_step(mb)
        pos = mb.get("position_ids")
        pos = _position_ids(mb["tokens"]) if pos is None else pos
        if output == "loss":
            out = module(mb["tokens"], pos, None, labels=mb["labels"])

            def collect(loss: torch.Tensor):
                mask = mb["loss_mask"].to(torch.float64)
                sums = torch.stack([(loss.double() * mask).sum(), mask.sum()])
                return loss.new_zeros(()), {"sums": sums}
        else:
            out = module(mb["tokens"], pos, None)

            def collect(logits: torch.Tensor):
                if output == "logits":
                    return logits.new_zeros(()), {"logits": gather_vocab_parallel(logits.detach().float())}
                return logits.new_zeros(()), {}
        return out, collect

    results: list = []
    try:
        with _registered(hooks):
            for group in _same_size_groups(micro_batches):
                b, s = group[0]["tokens"].shape
                reports = get_forward_backward_func()(
                    forward_step_func=forward_step, data_iterator=iter(group), model=model,
                    num_microbatches=len(group), seq_length=s, micro_batch_size=b, forward_only=True)
                key = {"logits": "logits", "loss": "sums"}.get(output)
                results.extend(r[key] if key else None for r in reports or [])
    finally:
        for m, t in zip(modules, was_training):
            m.train(t)
    return results


def _broadcast_from_last_stage(t: Optional[torch.Tensor], shape_hint: Sequence[int], dtype, device) -> torch.Tensor:
    """Send the last pipeline stage's tensor to every stage (its last dimension may be unknown elsewhere)."""
    from megatron.core import parallel_state as ps

    if ps.get_pipeline_model_parallel_world_size() == 1:
        return t
    group, src = ps.get_pipeline_model_parallel_group(), ps.get_pipeline_model_parallel_last_rank()
    last = torch.tensor([t.shape[-1] if ps.is_pipeline_last_stage() else 0], dtype=torch.long, device=device)
    dist.broadcast(last, src=src, group=group)
    if not ps.is_pipeline_last_stage():
        t = torch.empty(*shape_hint, int(last.item()), dtype=dtype, device=device)
    dist.broadcast(t, src=src, group=group)
    return t


@torch.no_grad()
def forward_logits(model: torch.nn.Module, tokens: torch.Tensor, micro_batch_size: Optional[int] = None) -> torch.Tensor:
    """Full-vocabulary logits ``[batch, seq, vocab]`` (fp32) for ``tokens``, on every rank.

    ``tokens`` must be the same on every rank. Works for any TP/PP layout the model was built with.
    """
    from megatron.core import parallel_state as ps

    batch, _ = tokens.shape
    mbs = micro_batch_size or batch
    if batch % mbs:
        raise ValueError(f"batch size {batch} is not divisible by micro_batch_size={mbs}")
    device = next(model.parameters()).device
    parts = run_forward(model, [{"tokens": c} for c in tokens.split(mbs)], "logits")
    logits = torch.cat(parts, dim=0) if ps.is_pipeline_last_stage() else None
    return _broadcast_from_last_stage(logits, tokens.shape, torch.float32, device)


@torch.no_grad()
def lm_loss_sums(model, micro_batches: Sequence[dict], dp_group=None) -> LossSums:
    """Masked next-token loss of ``model`` over ``micro_batches`` (this rank's share). Collective.

    Sums travel from the last pipeline stage to every stage, then are summed over ``dp_group``
    (pass it when each data-parallel replica evaluated different samples).
    """
    from megatron.core import parallel_state as ps

    modules = model if isinstance(model, list) else [model]
    device = next(modules[0].parameters()).device
    parts = run_forward(model, micro_batches, "loss")
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for p in parts:
        total += p.to(device)
    total = _broadcast_from_last_stage(total if ps.is_pipeline_last_stage() else None, (), torch.float64, device)
    if dp_group is not None and dist.get_world_size(dp_group) > 1:
        dist.all_reduce(total, group=dp_group)
    return LossSums(float(total[0]), float(total[1]))
