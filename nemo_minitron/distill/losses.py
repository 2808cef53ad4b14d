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


def _global_log_softmax(z: torch.Tensor, group) -> torch.Tensor:
    """log_softmax over a vocabulary split across ``group`` (no autograd; ``z`` is the local shard).

    ``group=None`` means the vocabulary is not split (no communication).
    """
    zmax = z.max(dim=-1, keepdim=True).values
    if group is not None:
        dist.all_reduce(zmax, op=dist.ReduceOp.MAX, group=group)
    z = z - zmax
    sum_exp = z.exp().sum(dim=-1, keepdim=True)
    if group is not None:
        dist.all_reduce(sum_exp, group=group)
    return z - sum_exp.log()


#: Elements of one fp32 chunk buffer of the chunked KL (rows = this // local vocabulary size), by device
#: type. On a CPU the three buffers of a chunk (1 MiB each) stay in cache, so the dozen passes over a
#: chunk cost cache rather than memory bandwidth (KL forward + backward of 1024 x 8192 logits on one
#: thread: ~115-145 ms against ~250 ms with 32 MiB chunks); GPUs keep 32 MiB chunks (few kernel launches).
KL_CHUNK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 23}

#: Fewest rows per chunk with the default chunk size (a huge vocabulary gets larger buffers, not 1-row chunks).
KL_CHUNK_MIN_ROWS = 8


def kl_chunk_elements(device: torch.device, vocab: int) -> int:
    """Default chunk buffer size of the chunked KL for ``vocab`` local logits per row on ``device``."""
    base = KL_CHUNK_ELEMENTS.get(device.type, KL_CHUNK_ELEMENTS["cuda"])
    return max(base, KL_CHUNK_MIN_ROWS * vocab)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` for 2-D tensors without a temporary of their size."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(a.shape[0])


class _VocabParallelKL(torch.autograd.Function):
    """Chunked KL over vocab-parallel logits with an analytic gradient computed in the forward pass.

    Rows (tokens) are processed a chunk at a time in three reused fp32 buffers of ``[rows, V/tp]``;
    each side is exponentiated once, the temperature is applied only when ``T != 1``. The gradient
    with respect to the raw student logits is written chunk by chunk into one buffer of the logits'
    shape and dtype (the size autograd's gradient has anyway) and scaled in place by the incoming
    per-token gradient in :meth:`backward`. Under TP each chunk takes two all-reduces: MAX of both
    sides' row maxima, then SUM of both partition functions and the local KL numerator. Every rank
    returns the global per-token KL and back-propagates its own copy with no TP scaling.
    """

    @staticmethod
    def forward(ctx, zs: torch.Tensor, zt: torch.Tensor, temperature: float, reverse: bool, group,  # noqa: D102
                chunk_elements: int) -> torch.Tensor:
        vocab = zs.shape[-1]
        s_all, t_all = zs.reshape(-1, vocab), zt.reshape(-1, vocab)
        n = s_all.shape[0]
        rows = max(1, min(n, chunk_elements // vocab))
        inv_t = 1.0 / temperature
        a, b, c = (torch.empty(rows, vocab, dtype=torch.float32, device=zs.device) for _ in range(3))
        out = torch.empty(n, dtype=torch.float32, device=zs.device)
        grad = torch.empty_like(s_all) if ctx.needs_input_grad[0] else None
        direct = grad is not None and grad.dtype == torch.float32  # write the gradient without a copy
        for lo in range(0, n, rows):
            m = min(n, lo + rows) - lo
            sa, sb, sc = a[:m], b[:m], c[:m]
            src_s, src_t = s_all[lo:lo + m], t_all[lo:lo + m]
            # max(z / T) = max(z) / T for T > 0: shift straight from the source rows into the buffers
            maxes = torch.stack([src_s.amax(-1), src_t.amax(-1)]).float()
            if group is not None:
                dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=group)
            torch.sub(src_s, maxes[0].unsqueeze(-1), out=sa)
            torch.sub(src_t, maxes[1].unsqueeze(-1), out=sb)
            if temperature != 1.0:
                sa.mul_(inv_t)
                sb.mul_(inv_t)
            if reverse:  # KL(q||p) = sum e_s (s - t) / Z_s + log Z_t - log Z_s
                torch.exp(sa, out=sc)  # e_s
                sa.sub_(sb)  # s - t
                num = _rowdot(sc, sa)
                sb.exp_()  # e_t
                sums = torch.stack([sc.sum(-1), sb.sum(-1), num])
            else:  # KL(p||q) = sum e_t (t - s) / Z_t + log Z_s - log Z_t
                torch.exp(sb, out=sc)  # e_t
                sb.sub_(sa)  # t - s
                num = _rowdot(sc, sb)
                sa.exp_()  # e_s
                sums = torch.stack([sa.sum(-1), sc.sum(-1), num])
            if group is not None:
                dist.all_reduce(sums, group=group)
            z_s, z_t, num = sums
            log_zs, log_zt = torch.log(z_s), torch.log(z_t)
            kl = num / z_s + log_zt - log_zs if reverse else num / z_t + log_zs - log_zt
            out[lo:lo + m] = kl
            if grad is None:
                continue
            dst = grad[lo:lo + m] if direct else sa
            if reverse:  # q_v (log q_v - log p_v - KL) / T, log q - log p = (s - t) - log Z_s + log Z_t
                sa.sub_((log_zs - log_zt + kl).unsqueeze(-1))
                torch.mul(sc, sa, out=dst)
                dst.mul_((inv_t / z_s).unsqueeze(-1))
            else:  # (q - p) / T = e_s / (T Z_s) - e_t / (T Z_t)
                torch.mul(sa, (inv_t / z_s).unsqueeze(-1), out=dst)
                dst.addcmul_(sc, (-inv_t / z_t).unsqueeze(-1))
            if not direct:
                grad[lo:lo + m] = dst
        if grad is not None:
            ctx.save_for_backward(grad)
        ctx.in_shape = zs.shape
        return out.view(zs.shape[:-1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: D102
        (grad,) = ctx.saved_tensors
        grad.mul_(grad_out.reshape(-1, 1).to(grad.dtype))  # the buffer serves one backward: scale in place
        return grad.view(ctx.in_shape), None, None, None, None, None


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
    computed a chunk of rows at a time (:class:`_VocabParallelKL`, ``chunk_elements`` values per
    buffer, default :func:`kl_chunk_elements` of the logits' device): no full-vocabulary fp32
    temporaries; the one full-size buffer kept for backward is the gradient itself.
    """
    if tp_group is not None and dist.get_world_size(tp_group) == 1:
        tp_group = None
    if tp_group is None and top_k is not None:
        return logit_kl(student_logits, teacher_logits, temperature, reverse, scale_by_t2, top_k)
    _check_temperature(temperature)
    if top_k is None:
        loss = _VocabParallelKL.apply(student_logits, teacher_logits.detach(), float(temperature), reverse, tp_group,
                                      int(chunk_elements or kl_chunk_elements(student_logits.device,
                                                                                 student_logits.shape[-1])))
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
