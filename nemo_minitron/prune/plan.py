"""Build a :class:`~nemo_minitron.prune.surgery.PrunePlan` from importance scores and targets."""

from __future__ import annotations

from typing import Optional

from nemo_minitron.config.model import ModelConfig
from nemo_minitron.prune.depth import kept_layers
from nemo_minitron.prune.hooks import ImportanceScores
from nemo_minitron.prune.ranking import attention_order, descending_order, select_attention, top_k
from nemo_minitron.prune.surgery import PrunePlan


def make_plan(cfg: ModelConfig, scores: Optional[ImportanceScores], ffn: Optional[int] = None,
              heads: Optional[int] = None, groups: Optional[int] = None, hidden: Optional[int] = None,
              drop: Optional[list[int]] = None) -> PrunePlan:
    """Kept indices for the given targets (None = keep the axis); ``drop`` lists 0-based layers."""
    plan = PrunePlan()
    layers = range(cfg.num_layers)
    if (ffn, heads, groups, hidden) != (None, None, None, None) and scores is None:
        raise ValueError("width pruning needs importance scores")
    if ffn is not None and ffn != cfg.ffn_hidden_size:
        plan.ffn = {n: top_k(scores.ffn[n], ffn) for n in layers}
    if heads is not None or groups is not None:
        g_target = groups if groups is not None else cfg.query_groups
        h_target = heads if heads is not None else g_target * (cfg.num_attention_heads // cfg.query_groups)
        if (g_target, h_target) != (cfg.query_groups, cfg.num_attention_heads):
            for n in layers:
                g, h = select_attention(scores.heads(n), scores.groups(n), cfg.query_groups, g_target, h_target)
                plan.groups[n], plan.heads[n] = g, h
    if hidden is not None and hidden != cfg.hidden_size:
        plan.hidden = top_k(scores.hidden, hidden)
    if drop:
        plan.keep_layers = kept_layers(cfg.num_layers, drop)
    return plan


def permutation_plan(cfg: ModelConfig, scores: ImportanceScores) -> PrunePlan:
    """Reorder every width axis by descending importance and keep everything (outputs must not change)."""
    plan = PrunePlan(hidden=descending_order(scores.hidden))
    for n in range(cfg.num_layers):
        plan.ffn[n] = descending_order(scores.ffn[n])
        plan.groups[n], plan.heads[n] = attention_order(scores.heads(n), scores.groups(n), cfg.query_groups)
    return plan
