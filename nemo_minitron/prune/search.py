"""Budget search: enumerate pruned shapes under a parameter budget (Minitron §5.2, ModelOpt ``params`` NAS).

Candidates are (hidden, ffn, heads, groups, layers) combinations on divisor grids, no wider than the
original and no narrower than ``1 − max pruning`` of it; those whose exact parameter count lies in
``[target·(1 − tolerance), target]`` are kept, largest first, and the ``top_k`` are pruned from the
cached scores and ranked by validation loss by the pipeline.

Candidate API (stable; a scorer other than the zero-shot loss plugs in here):

* :func:`enumerate_candidates` → the :class:`Candidate` shapes to score;
* :func:`candidate_plan` → for one candidate, its width-only :class:`~nemo_minitron.prune.surgery.PrunePlan`
  and the 0-based layers it drops. The pipeline builds the width plan at the run's TP × PP layout
  (``pipeline.build_pruned_sharded``) and skips the dropped layers in the forward
  (``calibrate.skip_layers``) instead of rebuilding the model;
* :func:`rank_candidates` → candidates with their score (lower is better: the zero-shot validation LM
  loss in ``pipeline``), best first, as the report's ``search`` section.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from nemo_minitron.config.model import ModelConfig
from nemo_minitron.models.params import count_parameters


@dataclass(frozen=True)
class Candidate:
    """One pruned shape and its parameter count."""

    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    num_layers: int
    params: int

    def to_dict(self) -> dict[str, int]:
        """Plain dict (for the report)."""
        return dict(self.__dict__)


def _grid(original: int, divisor: int, max_prune: float) -> list[int]:
    low = max(divisor, math.ceil(original * (1.0 - max_prune)))
    values = {v for v in range(divisor, original + 1, divisor) if v >= low}
    values.add(original)
    return sorted(values)


def enumerate_candidates(cfg: ModelConfig, target_params: int, tolerance: float = 0.05, top_k: int = 8,
                         max_width_pruning: float = 0.5, max_depth_pruning: float = 0.5, hidden_divisor: int = 64,
                         ffn_divisor: int = 64, prune_heads: bool = False, tp: int = 1) -> list[Candidate]:
    """Shapes within the budget, closest to ``target_params`` first (ties: wider MLP, then more layers)."""
    ffn_div = ffn_divisor * tp // math.gcd(ffn_divisor, tp)
    hidden = _grid(cfg.hidden_size, hidden_divisor, max_width_pruning)
    ffn = _grid(cfg.ffn_hidden_size, ffn_div, max_width_pruning)
    hpg = cfg.num_attention_heads // cfg.query_groups
    per_group = [k for k in range(1, hpg + 1) if k >= math.ceil(hpg * (1 - max_width_pruning))] if prune_heads else [hpg]
    per_group = [k for k in per_group if (k * cfg.query_groups) % tp == 0]
    layers = range(max(1, math.ceil(cfg.num_layers * (1 - max_depth_pruning))), cfg.num_layers + 1)
    low = target_params * (1.0 - tolerance)
    found = []
    for h, f, k, n in itertools.product(hidden, ffn, per_group, layers):
        shape = cfg.replace(hidden_size=h, ffn_hidden_size=f, num_attention_heads=k * cfg.query_groups,
                            num_query_groups=cfg.query_groups, num_layers=n, kv_channels=cfg.head_dim)
        params = count_parameters(shape).total
        if low <= params <= target_params:
            found.append(Candidate(h, f, k * cfg.query_groups, cfg.query_groups, n, params))
    found.sort(key=lambda c: (-c.params, -c.ffn_hidden_size, -c.num_layers, -c.hidden_size))
    return found[:top_k]


def candidate_plan(cfg: ModelConfig, scores, cand: Candidate, depth_method: str):
    """(width-only PrunePlan, 0-based dropped layers) of ``cand``; layers by ``layer_loss`` or else cosine."""
    from nemo_minitron.prune.depth import select_drop
    from nemo_minitron.prune.plan import make_plan

    per_layer = "layer_loss" if depth_method == "layer_loss" else "cosine"
    drop = select_drop(per_layer, cfg.num_layers, cand.num_layers, scores.layer_cosine, scores.layer_loss)
    width = make_plan(cfg, scores, cand.ffn_hidden_size, cand.num_attention_heads, cand.num_query_groups,
                      cand.hidden_size)
    return width, drop


def rank_candidates(cands: list[Candidate], losses: list[float], drops: list[list[int]]) -> list[dict[str, Any]]:
    """Candidates as dicts with ``val_loss`` and ``dropped_layers``, lowest loss first (ties: more parameters)."""
    rows = ({**c.to_dict(), "val_loss": loss, "dropped_layers": drop} for c, loss, drop in zip(cands, losses, drops))
    return sorted(rows, key=lambda d: (d["val_loss"], -d["params"]))
