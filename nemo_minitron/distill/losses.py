"""Knowledge-distillation losses as small, testable functions (Minitron, arXiv 2407.14679 §3; 2408.11796).

Everything here is pure torch. Functions that take a ``tp_group`` work on *vocab-parallel* logits
(each tensor-parallel rank holds a contiguous slice of the vocabulary) and return the same value
on every rank as the dense function on the full logits; gradients are computed analytically, as
megatron-core does for its vocab-parallel cross-entropy, so every rank can back-propagate its own
copy of the loss without any scaling by the TP size.

* :func:`logit_kl` / :func:`vocab_parallel_logit_kl`: per-token KL between teacher and student
  distributions at temperature ``T``; forward ``KL(p_teacher || q_student)`` (the Minitron default)
  or reverse ``KL(q || p)``; optional ``T**2`` scaling (Hinton et al.) and top-k truncation (KL over
  the teacher's ``k`` most likely tokens, renormalised).
* :func:`hidden_state_loss`: cosine (``1 - cos``) or MSE (mean over channels) per token.
* :func:`masked_mean`: loss-mask reduction.
* :func:`balance_losses`: ModelOpt/NeMo's ``LogitsAndIntermediatesLossBalancer`` (dynamic
  ``alpha = L_logits / L_intermediate`` and LM-loss mixing with ``kd_loss_scale``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nemo_minitron.distill.chunked_kl import KL_CHUNK_ELEMENTS, KL_CHUNK_MIN_ROWS, ChunkedKL, kl_chunk_elements

__all__ = ["KL_CHUNK_ELEMENTS", "KL_CHUNK_MIN_ROWS", "balance_losses", "hidden_state_loss", "kl_chunk_elements",
           "logit_kl", "masked_mean", "vocab_parallel_logit_kl"]

# ----------------------------------------------------------------------------- dense reference


def logit_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reverse: bool = False,
    scale_by_t2: bool = False,
    top_k: Optional[int] = None,
) -> torch.Tensor:
    """Per-token KL divergence between teacher and student token distributions (full vocabulary).

    Args:
        student_logits: ``[..., V]`` student logits (any float dtype; math in fp32).
        teacher_logits: ``[..., V]`` teacher logits (detached here).
        temperature: softmax temperature ``T`` applied to both.
        reverse: False gives forward ``KL(teacher || student)``, True gives ``KL(student || teacher)``.
        scale_by_t2: multiply by ``T**2`` so gradient magnitudes do not shrink with ``T``.
        top_k: if set, restrict both distributions to the teacher's top-``k`` tokens (renormalised).

    Returns:
        ``[...]`` KL per position (fp32).

    """
    _check_temperature(temperature)
    zs = student_logits.float() / temperature
    zt = teacher_logits.detach().float() / temperature
    if top_k is not None:
        _check_top_k(top_k, zs.shape[-1])
        zt, idx = zt.topk(top_k, dim=-1)
        zs = zs.gather(-1, idx)
    log_q = F.log_softmax(zs, dim=-1)
    log_p = F.log_softmax(zt, dim=-1)
    if reverse:
        loss = (log_q.exp() * (log_q - log_p)).sum(-1)
    else:
        loss = (log_p.exp() * (log_p - log_q)).sum(-1)
    return loss * (temperature**2) if scale_by_t2 else loss


def _check_temperature(t: float) -> None:
    if not t > 0:
        raise ValueError(f"kd.temperature={t!r} must be > 0")


def _check_top_k(k: int, vocab: int) -> None:
    if not 1 <= k <= vocab:
        raise ValueError(f"kd.top_k={k} must be in [1, vocab_size={vocab}]")


# ----------------------------------------------------------------------------- vocab-parallel


class _AllReduceSumIdentityGrad(torch.autograd.Function):
    """All-reduce SUM in forward, identity in backward (the loss is replicated on every rank)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:  # noqa: D102
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return grad, None


def vocab_parallel_logit_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tp_group=None,
    temperature: float = 1.0,
    reverse: bool = False,
    scale_by_t2: bool = False,
    top_k: Optional[int] = None,
    chunk_elements: Optional[int] = None,
) -> torch.Tensor:
    """:func:`logit_kl` on vocab-parallel shards ``[..., V / tp]``; equal on every rank to the dense value.

    ``tp_group`` is the tensor-parallel process group (None or a 1-rank group: the vocabulary is
    not split). Shards must be contiguous vocabulary slices in rank order, as megatron's
    ``ColumnParallelLinear`` output layer produces. The gradient w.r.t. the local student shard is
    exact when each rank back-propagates its own (identical) copy of the loss. Without top-k the KL is
    computed a chunk of rows at a time (:class:`~nemo_minitron.distill.chunked_kl.ChunkedKL`,
    ``chunk_elements`` values per buffer, default :func:`kl_chunk_elements` of the logits' device) with
    one collective under TP: no full-vocabulary fp32 temporaries; the one full-size buffer kept for
    backward is the gradient itself.
    """
    if tp_group is not None and dist.get_world_size(tp_group) == 1:
        tp_group = None
    if tp_group is None and top_k is not None:
        return logit_kl(student_logits, teacher_logits, temperature, reverse, scale_by_t2, top_k)
    _check_temperature(temperature)
    if top_k is None:
        chunk = chunk_elements or kl_chunk_elements(student_logits.device, student_logits.shape[-1])
        loss = ChunkedKL.apply(student_logits, teacher_logits.detach(), float(temperature), reverse, tp_group,
                               int(chunk))
    else:
        zs = student_logits.float() / temperature
        zt = teacher_logits.detach().float() / temperature
        loss = _vocab_parallel_topk_kl(zs, zt, top_k, reverse, tp_group)
    return loss * (temperature**2) if scale_by_t2 else loss


def _vocab_parallel_topk_kl(zs: torch.Tensor, zt: torch.Tensor, k: int, reverse: bool, group) -> torch.Tensor:
    """Top-k KL under TP: global teacher top-k ids, student logits gathered at them, dense KL over k."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    local_v = zs.shape[-1]
    _check_top_k(k, local_v * world)
    kk = min(k, local_v)
    vals, idx = zt.topk(kk, dim=-1)
    idx = idx + rank * local_v  # global vocabulary ids
    all_vals = [torch.empty_like(vals) for _ in range(world)]
    all_idx = [torch.empty_like(idx) for _ in range(world)]
    dist.all_gather(all_vals, vals.contiguous(), group=group)
    dist.all_gather(all_idx, idx.contiguous(), group=group)
    cand_vals, cand_idx = torch.cat(all_vals, -1), torch.cat(all_idx, -1)
    # Ties are broken by global id so every rank selects the same set in the same order.
    order = torch.argsort(cand_idx, dim=-1)
    cand_vals, cand_idx = cand_vals.gather(-1, order), cand_idx.gather(-1, order)
    zt_k, pos = cand_vals.topk(k, dim=-1)
    ids = cand_idx.gather(-1, pos)
    owned = (ids >= rank * local_v) & (ids < (rank + 1) * local_v)
    local_ids = (ids - rank * local_v).clamp(0, local_v - 1)
    zs_local = zs.gather(-1, local_ids) * owned
    zs_k = _AllReduceSumIdentityGrad.apply(zs_local, group)
    log_q = F.log_softmax(zs_k, dim=-1)
    log_p = F.log_softmax(zt_k, dim=-1)
    if reverse:
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


# ----------------------------------------------------------------------------- intermediate states


#: ``kd.intermediate_loss`` names -> per-token loss of fp32 states ``[..., H]`` (config validation reads this).
HIDDEN_STATE_LOSSES = {
    "cosine": lambda s, t: 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8),
    "mse": lambda s, t: (s - t).pow(2).mean(-1),
}


def hidden_state_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Per-token loss between (projected) student and teacher hidden states ``[..., H]``.

    ``cosine``: ``1 - cos(s, t)``; ``mse``: mean over channels of ``(s - t)**2`` (:data:`HIDDEN_STATE_LOSSES`).
    """
    s, t = student.float(), teacher.detach().float()
    if s.shape != t.shape:
        raise ValueError(f"hidden-state shapes differ: student {tuple(s.shape)} vs teacher {tuple(t.shape)}")
    if kind not in HIDDEN_STATE_LOSSES:
        raise ValueError(f"kd.intermediate_loss={kind!r} must be one of {list(HIDDEN_STATE_LOSSES)}")
    return HIDDEN_STATE_LOSSES[kind](s, t)


# ----------------------------------------------------------------------------- reduction, balancing


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(loss * mask) / max(sum(mask), 1)`` over all positions (0 when the mask is empty)."""
    mask = mask.to(per_token.dtype)
    if mask.shape != per_token.shape:
        raise ValueError(f"loss mask shape {tuple(mask.shape)} != loss shape {tuple(per_token.shape)}")
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


def balance_losses(
    lm_loss: Optional[torch.Tensor],
    logits_loss: torch.Tensor,
    intermediate_loss: Optional[torch.Tensor] = None,
    skip_lm_loss: bool = True,
    kd_loss_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Combine LM, logit-KD and intermediate-KD losses (Minitron's dynamic weighting).

    The intermediate loss is rescaled to the logit loss magnitude (``alpha = L_logits / L_int``,
    a constant for autograd). With ``skip_lm_loss`` the total is the KD loss; otherwise
    ``L_lm + kd_loss_scale * L_kd * (L_lm / L_kd)`` (the KD term rescaled to ``kd_loss_scale`` times
    the LM-loss magnitude, again a constant ratio).

    Returns ``{"loss": total, "kd_loss": L_kd, "logits_loss", "intermediate_loss", "lm_loss"}``.
    """
    zero = logits_loss.new_zeros(())
    kd = logits_loss
    inter = intermediate_loss if intermediate_loss is not None else zero
    if intermediate_loss is not None:  # tensor ops only: no host sync per micro-batch
        i_val = intermediate_loss.detach()
        alpha = torch.where(i_val > 0, logits_loss.detach() / i_val.clamp_min(torch.finfo(i_val.dtype).tiny), zero)
        kd = logits_loss + intermediate_loss * alpha
    lm = lm_loss if lm_loss is not None else zero
    if skip_lm_loss:
        total = kd
    else:
        if lm_loss is None:
            raise ValueError("kd.skip_lm_loss=false needs the student's LM loss")
        kd_val = kd.detach()
        ratio = torch.where(kd_val > 0, lm.detach() / kd_val.clamp_min(torch.finfo(kd_val.dtype).tiny),
                            torch.ones_like(kd_val))
        total = lm + kd_loss_scale * kd * ratio
    return {"loss": total, "kd_loss": kd, "logits_loss": logits_loss, "intermediate_loss": inter, "lm_loss": lm}
