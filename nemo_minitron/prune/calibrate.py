"""Pruning's use of the forward engine: calibration samples, the calibration pass, masked LM loss, layer skips.

Both passes run on :mod:`nemo_minitron.models.forward` (megatron-core's pipeline schedule, forward
only), so they work at any TP/PP layout. Samples are split over data-parallel ranks; sums are
all-reduced over DP.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

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


def _micro_batches(batch: TokenBatch, mbs: int) -> list[dict]:
    """Micro-batches of ``mbs`` windows (the last one may be smaller) with their validity mask."""
    return [{"tokens": batch.tokens[i:i + mbs], "mask": batch.mask[i:i + mbs]} for i in range(0, len(batch), mbs)]


def run_forward(model, batch: TokenBatch, ctx, mbs: int, collector=None, progress: bool = True,
                chunk: Optional[int] = None) -> float:
    """Forward ``batch`` (this DP rank's share) through ``model``; feed ``collector`` the mask. Returns seconds.

    Runs on the package's forward engine (:func:`nemo_minitron.models.forward.run_forward`), ``chunk``
    micro-batches per schedule call (progress is reported between calls).
    """
    from tqdm import tqdm

    shard = batch.dp_shard(ctx.dp_rank, ctx.dp_size)
    chunk = chunk or max(4, 2 * ctx.pp_size)
    micro = _micro_batches(shard, mbs)

    def before_step(mb: dict) -> None:
        if collector is not None:
            collector.mask = mb["mask"]

    start = time.perf_counter()
    bar = tqdm(total=len(shard), desc="calibration", unit="sample", disable=not progress or ctx.rank != 0)
    for i in range(0, len(micro), chunk):
        part = micro[i:i + chunk]
        _forward.run_forward(model, part, "none", before_step=before_step)
        bar.update(sum(m["tokens"].shape[0] for m in part))
    bar.close()
    elapsed = time.perf_counter() - start
    tokens = len(shard) * batch.tokens.shape[1]
    log.info("forward over %d samples (%d tokens on this rank) in %.1f s: %.0f tokens/s", len(shard), tokens,
             elapsed, tokens / max(elapsed, 1e-9))
    return elapsed


def eval_loss(model, batch: TokenBatch, ctx, mbs: int) -> float:
    """Mean next-token cross-entropy over valid target positions (same value on every rank). Collective.

    :func:`nemo_minitron.models.forward.lm_loss_sums` over this rank's share of the windows, summed over DP.
    """
    shard = batch.dp_shard(ctx.dp_rank, ctx.dp_size)
    micro = _forward.window_batches(shard.tokens, shard.mask, mbs)
    return _forward.lm_loss_sums(model, micro, dp_group=ctx.dp_group if ctx.dp_size > 1 else None).loss


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

