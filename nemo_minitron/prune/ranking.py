"""Turn importance scores into kept index sets, deterministically.

Every function breaks ties by the lower original index (stable sort), so every rank and every
parallel layout that sees the same scores keeps exactly the same units. Kept indices are returned
in ascending original order (the pruned model keeps its units in their original order);
:func:`descending_order` gives the full importance order used to permute a model instead.
"""

from __future__ import annotations

import torch


def descending_order(scores: torch.Tensor) -> list[int]:
    """All indices by descending score; ties keep the lower index first."""
    return torch.sort(scores.double().cpu(), descending=True, stable=True).indices.tolist()


def top_k(scores: torch.Tensor, k: int) -> list[int]:
    """The ``k`` highest-scoring indices, in ascending index order."""
    if not 0 < k <= scores.numel():
        raise ValueError(f"cannot keep {k} of {scores.numel()} units")
    return sorted(descending_order(scores)[:k])


def select_attention(head_scores: torch.Tensor, group_scores: torch.Tensor, num_groups: int,
                     target_groups: int, target_heads: int) -> tuple[list[int], list[int]]:
    """Kept (query groups, query heads) under GQA.

    Groups are ranked by their group score; within every kept group the same number of heads
    (``target_heads / target_groups``) is kept, ranked within that group only, so the GQA structure
    survives. Head indices are global (group-major: head ``h`` belongs to group ``h // heads_per_group``).
    """
    num_heads = head_scores.numel()
    if num_heads % num_groups or target_heads % target_groups:
        raise ValueError("heads must be a multiple of query groups (before and after pruning)")
    hpg, new_hpg = num_heads // num_groups, target_heads // target_groups
    if new_hpg > hpg:
        raise ValueError(f"cannot keep {new_hpg} heads per group out of {hpg}")
    groups = top_k(group_scores, target_groups)
    heads: list[int] = []
    for g in groups:
        local = top_k(head_scores[g * hpg:(g + 1) * hpg], new_hpg)
        heads.extend(g * hpg + j for j in local)
    return groups, heads


def attention_order(head_scores: torch.Tensor, group_scores: torch.Tensor, num_groups: int) -> tuple[list[int], list[int]]:
    """Full permutation (groups by importance, heads by importance within each group) keeping every unit."""
    hpg = head_scores.numel() // num_groups
    groups = descending_order(group_scores)
    heads = [g * hpg + j for g in groups for j in descending_order(head_scores[g * hpg:(g + 1) * hpg])]
    return groups, heads


def layers_to_drop(layer_scores: torch.Tensor, target_layers: int) -> list[int]:
    """0-based layers with the lowest scores such that ``target_layers`` remain (ascending)."""
    n = layer_scores.numel()
    if not 0 < target_layers <= n:
        raise ValueError(f"cannot keep {target_layers} of {n} layers")
    kept = top_k(layer_scores, target_layers)
    return [i for i in range(n) if i not in set(kept)]


def best_block(block_losses: dict[int, float], block: int) -> list[int]:
    """0-based contiguous block ``[s, s+block)`` whose removal gave the lowest loss (ties: earliest start)."""
    start = min(sorted(block_losses), key=lambda s: block_losses[s])
    return list(range(start, start + block))
