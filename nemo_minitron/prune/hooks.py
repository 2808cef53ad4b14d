"""Forward hooks that collect Minitron importance statistics on a (TP/PP-split) megatron GPTModel.

Hook sites (algorithms.md §3.2):

* MLP neurons: input of ``mlp.linear_fc2`` (post-activation, ``[S, B, f/TP]`` per TP rank);
* attention heads / query groups: input of ``self_attention.linear_proj`` (``[S, B, n_h·d/TP]``, group-major);
* embedding channels: outputs of ``input_layernorm`` and ``pre_mlp_layernorm`` (under the TE spec the norm
  is fused into ``linear_qkv``/``linear_fc1``; it is recomputed from their input and ``layer_norm_weight``);
* layers: input and output hidden states of every ``TransformerLayer`` (1 − cosine).

Reduction (algorithms.md §3.5), done through an explicit :class:`~nemo_minitron.runtime.ParallelContext`:
running sums are all-reduced over DP *before* the final square root (exact); TP-sharded channel scores are
all-gathered in TP-rank order (full vectors, no approximation); replicated norm outputs are taken from TP
rank 0 once; per-layer results are gathered over PP and keyed by the global ``layer_number``. Every rank
ends with identical full score vectors. Under sequence parallelism the norm outputs and layer boundaries
are split along the sequence over TP: their per-sample sums and counts are all-reduced over TP before
any division or square root (:mod:`nemo_minitron.prune.seqpar`), so the scores equal those without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist

from nemo_minitron.models import names
from nemo_minitron.prune.importance import BatchAccumulator, cosine_stats, group_scores, head_scores, seq_aggregate
from nemo_minitron.prune.seqpar import local_mask, sequence_parallel_aggregate


@dataclass
class ImportanceScores:
    """Full (TP=1 shaped) importance scores; layer keys are 0-based global layer indices (``layer_number − 1``)."""

    ffn: dict[int, torch.Tensor]
    """Per-layer neuron scores ``[f]``."""
    attn_channels: dict[int, torch.Tensor]
    """Per-layer ``linear_proj`` input channel scores ``[n_h·d]`` (group-major)."""
    hidden_sites: dict[int, torch.Tensor]
    """Per-layer ``[2, h]`` scores of the two post-norm sites."""
    layer_cosine: dict[int, float]
    """Per-layer mean ``1 − cos(input, output)`` over valid tokens."""
    num_heads: int
    num_groups: int
    layer_loss: dict[int, float] = field(default_factory=dict)
    """Validation loss with layer ``i`` removed (filled on demand)."""
    block_loss: dict[int, dict[int, float]] = field(default_factory=dict)
    """``{block_size: {start: loss}}`` validation loss with layers ``[start, start+block)`` removed."""

    @property
    def hidden(self) -> torch.Tensor:
        """Global embedding-channel score: sum over every post-norm site of every layer (in layer order)."""
        total = None
        for n in sorted(self.hidden_sites):
            s = self.hidden_sites[n].sum(0)
            total = s if total is None else total + s
        return total

    def heads(self, layer: int) -> torch.Tensor:
        """Per-head scores of ``layer``."""
        return head_scores(self.attn_channels[layer], self.num_heads)

    def groups(self, layer: int) -> torch.Tensor:
        """Per-query-group scores of ``layer``."""
        return group_scores(self.attn_channels[layer], self.num_groups)

    def cosine_vector(self) -> torch.Tensor:
        """Layer cosine scores as a vector in layer order."""
        return torch.tensor([self.layer_cosine[n] for n in sorted(self.layer_cosine)], dtype=torch.float64)

    def to_dict(self) -> dict[str, Any]:
        """Serialisable form (tensors and plain types only; loads with ``weights_only=True``)."""
        return {"ffn": self.ffn, "attn_channels": self.attn_channels, "hidden_sites": self.hidden_sites,
                "layer_cosine": self.layer_cosine, "num_heads": self.num_heads, "num_groups": self.num_groups,
                "layer_loss": self.layer_loss, "block_loss": self.block_loss}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImportanceScores":
        """Inverse of :meth:`to_dict`."""
        return cls(**d)


def _norm_output(module: torch.nn.Module, x: torch.Tensor, normalization: str, eps: float,
                 zero_centered_gamma: bool = False) -> torch.Tensor:
    """Recompute a TE-fused norm's output from its input (the one norm formula of :mod:`nemo_minitron.models.names`)."""
    return names.fused_norm_output(module, x, normalization, eps, zero_centered_gamma)


class ImportanceCollector:
    """Register hooks on ``model`` (this rank's stage); set :attr:`mask` before every micro-batch."""

    def __init__(self, model: torch.nn.Module, ctx, num_heads: int, num_groups: int, seq_agg: str = "mean",
                 batch_agg: str = "l2", normalization: str = "RMSNorm", eps: float = 1e-5):
        self.ctx, self.seq_agg, self.batch_agg = ctx, seq_agg, batch_agg
        self.num_heads, self.num_groups = num_heads, num_groups
        self.mask: Optional[torch.Tensor] = None
        self.hook_seconds = 0.0
        """Wall time spent inside the hooks (CPU; on GPUs only the kernel-launch time)."""
        self.handles: list[Any] = []
        self.acc: dict[tuple[str, int], BatchAccumulator] = {}
        self.cos: dict[int, torch.Tensor] = {}
        self.layer_numbers: list[int] = []
        module = getattr(model, "module", model)
        self.sequence_parallel = bool(getattr(getattr(module, "config", None), "sequence_parallel", False)) \
            and ctx.tp_size > 1
        """Norm outputs and layer boundaries hold this rank's block of the sequence (megatron's SP)."""
        for layer in module.decoder.layers:
            n = int(layer.layer_number) - 1  # 0-based global layer index
            self.layer_numbers.append(n)
            self.cos[n] = torch.zeros(2, dtype=torch.float64)
            self._pre(layer.mlp.linear_fc2, ("ffn", n))
            self._pre(layer.self_attention.linear_proj, ("attn", n))
            for site in (0, 1):
                mod, fused = names.norm_site(layer, site)
                if fused:
                    self._fused(mod, ("hid%d" % site, n), normalization, eps)
                else:
                    self._post(mod, ("hid%d" % site, n))
            self.handles.append(layer.register_forward_hook(self._layer_hook(n), with_kwargs=True))

    # ------------------------------------------------------------------ hooks
    def _seq_mask(self) -> Optional[torch.Tensor]:
        """The mask of the positions a sequence-split activation holds on this rank."""
        return local_mask(self.mask, self.ctx.tp_rank, self.ctx.tp_size) if self.sequence_parallel else self.mask

    def _add(self, key: tuple[str, int], x: torch.Tensor) -> None:
        start = time.perf_counter()
        with torch.no_grad():
            if self.sequence_parallel and key[0].startswith("hid"):
                values, valid = sequence_parallel_aggregate(x.detach(), self._seq_mask(), self.seq_agg,
                                                            self.ctx.tp_group)
            else:
                values, valid = seq_aggregate(x.detach(), self.mask, self.seq_agg)
            if key not in self.acc:
                self.acc[key] = BatchAccumulator(values.shape[-1], values.device)
            self.acc[key].update(values, valid)
        self.hook_seconds += time.perf_counter() - start

    def _pre(self, mod: torch.nn.Module, key: tuple[str, int]) -> None:
        self.handles.append(mod.register_forward_pre_hook(lambda m, args: self._add(key, args[0])))

    def _post(self, mod: torch.nn.Module, key: tuple[str, int]) -> None:
        self.handles.append(mod.register_forward_hook(lambda m, args, out: self._add(key, out)))

    def _fused(self, mod: torch.nn.Module, key: tuple[str, int], normalization: str, eps: float) -> None:
        def hook(m, args):
            with torch.no_grad():
                self._add(key, _norm_output(m, args[0], normalization, eps))

        self.handles.append(mod.register_forward_pre_hook(hook))

    def _layer_hook(self, n: int):
        def hook(m, args, kwargs, out):
            start = time.perf_counter()
            h_in = kwargs.get("hidden_states", args[0] if args else None)
            h_out = out[0] if isinstance(out, (tuple, list)) else out
            with torch.no_grad():
                s, c = cosine_stats(h_in.detach(), h_out.detach(), self._seq_mask())
                if self.cos[n].device != s.device:
                    self.cos[n] = self.cos[n].to(s.device)
                self.cos[n] += torch.stack([s, c])
            self.hook_seconds += time.perf_counter() - start

        return hook

    def remove(self) -> None:
        """Remove every hook."""
        for h in self.handles:
            h.remove()
        self.handles.clear()

    # ------------------------------------------------------------------ reduction
    def finalize(self) -> ImportanceScores:
        """Reduce over DP/TP/PP (collective on every rank) → identical full scores everywhere."""
        ctx = self.ctx
        device = ctx.device
        keys = [(kind, n) for n in self.layer_numbers for kind in ("ffn", "attn", "hid0", "hid1")]
        missing = [k for k in keys if k not in self.acc]
        if missing:
            raise RuntimeError(f"no activations were recorded for {missing[:3]}...: was the calibration pass run?")
        if self.sequence_parallel and self.layer_numbers:  # each TP rank summed its own positions
            cos = torch.stack([self.cos[n].to(device) for n in self.layer_numbers])
            dist.all_reduce(cos, group=ctx.tp_group)
            self.cos = {n: cos[i] for i, n in enumerate(self.layer_numbers)}
        packed = [self.acc[k].packed().to(device) for k in keys]
        sizes = [p.numel() for p in packed]
        flat = torch.cat(packed + [self.cos[n].to(device) for n in self.layer_numbers])
        if ctx.dp_size > 1:
            dist.all_reduce(flat, group=ctx.dp_group)
        parts = list(flat[:sum(sizes)].split(sizes))
        cos_flat = flat[sum(sizes):].view(-1, 2).cpu()
        local: dict[int, dict[str, Any]] = {}
        for (kind, n), part in zip(keys, parts):
            local.setdefault(n, {})[kind] = BatchAccumulator.finalize_packed(part, self.batch_agg)
        for i, n in enumerate(self.layer_numbers):
            local[n]["cos"] = float(cos_flat[i, 0] / cos_flat[i, 1].clamp_min(1.0))
        if ctx.tp_size > 1:
            for n in self.layer_numbers:
                for kind in ("ffn", "attn"):
                    t = local[n][kind].contiguous()
                    gathered = [torch.empty_like(t) for _ in range(ctx.tp_size)]
                    dist.all_gather(gathered, t, group=ctx.tp_group)
                    local[n][kind] = torch.cat(gathered)
                hid = torch.stack([local[n]["hid0"], local[n]["hid1"]]).contiguous()
                dist.broadcast(hid, src=dist.get_process_group_ranks(ctx.tp_group)[0], group=ctx.tp_group)
                local[n]["hid0"], local[n]["hid1"] = hid[0], hid[1]
        merged = {n: {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in d.items()}
                  for n, d in local.items()}
        if ctx.pp_size > 1:
            objs: list[Any] = [None] * ctx.pp_size
            dist.all_gather_object(objs, merged, group=ctx.pp_group)
            merged = {n: d for o in objs for n, d in o.items()}
        return ImportanceScores(
            ffn={n: merged[n]["ffn"] for n in sorted(merged)},
            attn_channels={n: merged[n]["attn"] for n in sorted(merged)},
            hidden_sites={n: torch.stack([merged[n]["hid0"], merged[n]["hid1"]]) for n in sorted(merged)},
            layer_cosine={n: merged[n]["cos"] for n in sorted(merged)},
            num_heads=self.num_heads, num_groups=self.num_groups,
        )
