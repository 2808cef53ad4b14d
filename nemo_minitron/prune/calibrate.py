"""Forward-only loops for pruning: the calibration pass, masked LM loss, and layer-removal losses.

All loops use megatron-core's pipeline schedule (forward_only), so they run at any TP/PP layout.
Samples are split over data-parallel ranks; sums are all-reduced over DP.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.distributed as dist

from nemo_minitron.logging import get_logger
from nemo_minitron.models import forward as _forward

log = get_logger(__name__)


@dataclass
class TokenBatch:
    """Token windows ``[N, L]`` and their validity mask ``[N, L]`` (True = position counts)."""

    tokens: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def slice(self, start: int, stop: int) -> "TokenBatch":
        """Samples ``start:stop``."""
        return TokenBatch(self.tokens[start:stop], self.mask[start:stop])

    def dp_shard(self, dp_rank: int, dp_size: int) -> "TokenBatch":
        """Contiguous share of the samples for data-parallel rank ``dp_rank``."""
        idx = torch.tensor_split(torch.arange(len(self)), dp_size)[dp_rank]
        return TokenBatch(self.tokens[idx], self.mask[idx])


def load_tokens(source: str, num_samples: int, seq_length: int, seed: int, tokenizer_dir: Optional[Path]) -> TokenBatch:
    """``num_samples`` windows of ``seq_length`` tokens from ``source``.

    ``.pt`` files hold ``{"tokens": LongTensor[N, L], "mask": BoolTensor[N, L]}`` (pre-tokenized, e.g. for
    tests); anything else goes through the data package's calibration loader, tokenized with the
    checkpoint's own tokenizer.
    """
    if source.endswith(".pt"):
        data = torch.load(source, map_location="cpu", weights_only=True)
        tokens, mask = data["tokens"].long(), data.get("mask")
        mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
        if tokens.shape[0] < num_samples or tokens.shape[1] < seq_length:
            raise ValueError(f"prune.calib_data={source} holds {tuple(tokens.shape)} tokens; need "
                             f"{num_samples} samples of {seq_length}")
        return TokenBatch(tokens[:num_samples, :seq_length].contiguous(), mask[:num_samples, :seq_length].contiguous())
    from nemo_minitron.data.calibration import load_calibration_data

    is_prefix = Path(source + ".bin").is_file() and Path(source + ".idx").is_file()
    if tokenizer_dir is None and not is_prefix:
        raise ValueError(f"prune.calib_data={source} is raw text but the checkpoint carries no tokenizer/ directory")
    data = load_calibration_data(source, num_samples, seq_length, seed=seed,
                                 tokenizer=str(tokenizer_dir) if tokenizer_dir is not None else None)
    return TokenBatch(data.tokens.long(), data.mask.bool())


def _micro_batches(batch: TokenBatch, mbs: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Groups of equal-size micro-batches (a pipeline schedule call needs one micro-batch size)."""
    full = len(batch) // mbs * mbs
    groups = []
    if full:
        groups.append([(batch.tokens[i:i + mbs], batch.mask[i:i + mbs]) for i in range(0, full, mbs)])
    if len(batch) > full:
        groups.append([(batch.tokens[full:], batch.mask[full:])])
    return groups


def _run_schedule(model, micro: list, step, seq: int) -> list:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    return get_forward_backward_func()(forward_step_func=step, data_iterator=iter(micro), model=model,
                                       num_microbatches=len(micro), seq_length=seq,
                                       micro_batch_size=micro[0][0].shape[0], forward_only=True)


def _positions(tokens: torch.Tensor) -> torch.Tensor:
    return torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)


@torch.no_grad()
def run_forward(model, batch: TokenBatch, ctx, mbs: int, collector=None, progress: bool = True,
                chunk: Optional[int] = None) -> float:
    """Forward ``batch`` (this DP rank's share) through ``model``; feed ``collector`` the mask. Returns seconds."""
    from tqdm import tqdm

    model.eval()
    device = ctx.device
    shard = batch.dp_shard(ctx.dp_rank, ctx.dp_size)
    chunk = chunk or max(4, 2 * ctx.pp_size)
    calls = []
    for group in _micro_batches(shard, mbs):
        calls.extend(group[i:i + chunk] for i in range(0, len(group), chunk))

    def step(data_iter, module):
        tok, msk = next(data_iter)
        tok = tok.to(device)
        if collector is not None:
            collector.mask = msk.to(device)
        out = module(tok, _positions(tok), None)
        return out, lambda o: (o.new_zeros(()), {})

    start = time.perf_counter()
    bar = tqdm(total=len(shard), desc="calibration", unit="sample", disable=not progress or ctx.rank != 0)
    for micro in calls:
        _run_schedule(model, micro, step, batch.tokens.shape[1])
        bar.update(sum(m[0].shape[0] for m in micro))
    bar.close()
    elapsed = time.perf_counter() - start
    tokens = len(shard) * batch.tokens.shape[1]
    log.info("forward over %d samples (%d tokens on this rank) in %.1f s: %.0f tokens/s", len(shard), tokens,
             elapsed, tokens / max(elapsed, 1e-9))
    return elapsed


@torch.no_grad()
def eval_loss(model, batch: TokenBatch, ctx, mbs: int) -> float:
    """Mean next-token cross-entropy over valid target positions (same value on every rank)."""
    model.eval()
    device = ctx.device
    shard = batch.dp_shard(ctx.dp_rank, ctx.dp_size)
    total = torch.zeros(2, dtype=torch.float64, device=device)

    def step(data_iter, module):
        tok, msk = next(data_iter)
        tok, msk = tok.to(device), msk.to(device)
        inp, labels = tok[:, :-1].contiguous(), tok[:, 1:].contiguous()
        lmask = (msk[:, 1:] & msk[:, :-1]).float()
        out = module(inp, _positions(inp), None, labels=labels)

        def loss_func(loss):
            s = (loss.float() * lmask).sum()
            return s, {"sum": s.double().detach(), "count": lmask.sum().double()}

        return out, loss_func

    for micro in _micro_batches(shard, mbs):
        results = _run_schedule(model, micro, step, batch.tokens.shape[1] - 1)
        if ctx.is_last_stage:
            for r in results:
                total += torch.stack([r["sum"], r["count"]]).to(device)
    if ctx.pp_size > 1:
        src = dist.get_process_group_ranks(ctx.pp_group)[-1]
        dist.broadcast(total, src=src, group=ctx.pp_group)
    if ctx.dp_size > 1:
        dist.all_reduce(total, group=ctx.dp_group)
    return float(total[0] / total[1].clamp_min(1.0))


@contextlib.contextmanager
def skip_layers(model, layers: Iterable[int]):
    """Temporarily turn the given 0-based global layers of ``model`` (this stage) into identities."""
    module = getattr(model, "module", model)
    skip = set(layers)
    saved = []
    for layer in module.decoder.layers:
        if int(layer.layer_number) - 1 in skip:
            saved.append((layer, layer.forward))
            layer.forward = lambda *a, **k: (k.get("hidden_states", a[0] if a else None), k.get("context"))
    try:
        yield
    finally:
        for layer, fwd in saved:
            layer.forward = fwd


perplexity = _forward.perplexity  # the package's one definition (nemo_minitron.models.forward)
