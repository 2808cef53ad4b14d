"""Exact KL between teacher and student logits a chunk of rows at a time, gradient computed in the forward pass.

:class:`ChunkedKL` is what :func:`~nemo_minitron.distill.losses.vocab_parallel_logit_kl` runs without top-k.
Rows (tokens) go through three reused fp32 buffers of ``[rows, V/tp]``; each side is shifted by this
rank's row maximum and exponentiated once, the temperature is applied only when ``T != 1``. With
``a = (s - m_s) / T`` and ``b = (t - m_t) / T`` one chunk gives five numbers per row,
``m_s, m_t, S_s = sum e^a, S_t = sum e^b`` and the numerator ``n = sum e^b (b - a)`` (forward KL) or
``sum e^a (a - b)`` (reverse), from which the KL and the gradient follow:

* vocabulary not split (``group=None``): the chunk's gradient is written at once, one pass per chunk;
* vocabulary split over tensor-parallel ranks: every rank keeps its statistics, one ``all_gather`` of
  them for all rows combines the shards (:func:`combine_shards`, the partition functions rescaled to the
  global maxima), then a second pass writes the gradient. One collective per call instead of two per
  chunk matters where collectives are slow (gloo on a CPU: ~0.3-3 ms each).

The gradient with respect to the raw student logits goes into one buffer of the logits' shape and
dtype (the size autograd's gradient has anyway); :meth:`ChunkedKL.backward` scales it in place by the
incoming per-token gradient. Every rank returns the global per-token KL and back-propagates its own
copy without any TP scaling.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

#: Elements of one fp32 chunk buffer (rows = this // local vocabulary size), by device type. On a CPU the
#: three buffers of a chunk (1 MiB each) stay in cache, so the dozen passes over a chunk cost cache rather
#: than memory bandwidth (KL forward + backward of 1024 x 8192 logits on one thread: ~115-145 ms against
#: ~250 ms with 32 MiB chunks); GPUs keep 32 MiB chunks (few kernel launches).
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


def combine_shards(stats: torch.Tensor, inv_t: float, reverse: bool):
    """Global KL and this rank's gradient coefficients from every rank's chunk statistics.

    ``stats`` is ``[world, 5, n]``: each rank's ``m_s, m_t, S_s, S_t, n`` (module docstring), rank order.
    Returns ``(kl, z_s, z_t, m_s, m_t, log_ratio)`` per row, where ``z_s = sum_r e^{(m_s,r - M_s)/T} S_s,r`` is
    the student's partition function at the global maximum ``M_s`` (``z_t`` likewise), ``m_s, m_t`` are the
    global maxima and ``log_ratio = log z_t - log z_s``. The per-rank max offsets are carried relative to
    the global maxima, so the large ``M / T`` terms cancel exactly rather than in floating point.
    """
    ms, mt, ss, st, num = stats.unbind(1)
    gms, gmt = ms.amax(0), mt.amax(0)
    ds, dt = (ms - gms) * inv_t, (mt - gmt) * inv_t  # <= 0
    ws, wt = ds.exp(), dt.exp()
    z_s, z_t = (ws * ss).sum(0), (wt * st).sum(0)
    log_ratio = z_t.log() - z_s.log()
    if reverse:  # KL(q||p) = sum_r w_s,r (n_r + (d_s,r - d_t,r) S_s,r) / z_s + log z_t - log z_s
        kl = (ws * (num + (ds - dt) * ss)).sum(0) / z_s + log_ratio
    else:  # KL(p||q) = sum_r w_t,r (n_r + (d_t,r - d_s,r) S_t,r) / z_t + log z_s - log z_t
        kl = (wt * (num + (dt - ds) * st)).sum(0) / z_t - log_ratio
    return kl, z_s, z_t, gms, gmt, log_ratio


class ChunkedKL(torch.autograd.Function):
    """Per-token KL of ``[..., V/tp]`` logits (see module docstring); ``group=None``: vocabulary not split."""

    @staticmethod
    def forward(ctx, zs: torch.Tensor, zt: torch.Tensor, temperature: float, reverse: bool, group,  # noqa: D102
                chunk_elements: int) -> torch.Tensor:
        vocab = zs.shape[-1]
        s_all, t_all = zs.reshape(-1, vocab), zt.reshape(-1, vocab)
        n = s_all.shape[0]
        rows = max(1, min(n, chunk_elements // vocab))
        inv_t = 1.0 / temperature
        dev = zs.device
        bufs = [torch.empty(rows, vocab, dtype=torch.float32, device=dev) for _ in range(3)]
        stats = torch.empty(5, n, dtype=torch.float32, device=dev)  # this rank's m_s, m_t, S_s, S_t, numerator
        out = torch.empty(n, dtype=torch.float32, device=dev)
        grad = torch.empty_like(s_all) if ctx.needs_input_grad[0] else None
        direct = grad is not None and grad.dtype == torch.float32  # the gradient buffer can hold fp32 e^a
        split = group is not None
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            sa, sb, sc = (x[:hi - lo] for x in bufs)
            st = stats[:, lo:hi]
            # where e^a goes: the gradient rows when they are written in a second pass, else a buffer
            ea = grad[lo:hi] if split and direct else (sc if reverse else sa)
            _chunk(s_all[lo:hi], t_all[lo:hi], st, sa, sb, sc, ea, inv_t, reverse)
            if split:
                continue
            z_s, z_t, num = st[2], st[3], st[4]
            log_ratio = z_t.log() - z_s.log()
            kl = num / z_s + log_ratio if reverse else num / z_t - log_ratio
            out[lo:hi] = kl
            if grad is None:
                continue
            dst = grad[lo:hi] if direct else sa
            if reverse:  # q (log q - log p - KL) / T, log q - log p = (a - b) + log z_t - log z_s; sa holds a - b
                sa.add_((log_ratio - kl).unsqueeze(-1))
                torch.mul(ea, sa, out=dst)
                dst.mul_((inv_t / z_s).unsqueeze(-1))
            else:  # (q - p) / T = e^a / (T z_s) - e^b / (T z_t); sc holds e^b
                torch.mul(ea, (inv_t / z_s).unsqueeze(-1), out=dst)
                dst.addcmul_(sc, (-inv_t / z_t).unsqueeze(-1))
            if not direct:
                grad[lo:hi] = dst
        if split:
            parts = [torch.empty_like(stats) for _ in range(dist.get_world_size(group))]
            dist.all_gather(parts, stats, group=group)
            kl, z_s, z_t, gms, gmt, log_ratio = combine_shards(torch.stack(parts), inv_t, reverse)
            out.copy_(kl)
            if grad is not None:
                _split_gradient(s_all, t_all, stats, grad, direct, bufs, rows, inv_t, reverse,
                                (kl, z_s, z_t, gms, gmt, log_ratio))
        if grad is not None:
            ctx.save_for_backward(grad)
        ctx.in_shape = zs.shape
        return out.view(zs.shape[:-1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: D102
        (grad,) = ctx.saved_tensors
        grad.mul_(grad_out.reshape(-1, 1).to(grad.dtype))  # the buffer serves one backward: scale in place
        return grad.view(ctx.in_shape), None, None, None, None, None


def _chunk(src_s, src_t, st, sa, sb, sc, ea, inv_t: float, reverse: bool) -> None:
    """One chunk's local statistics into ``st`` (``[5, rows]``); leaves e^a in ``ea``.

    Forward KL: ``sb`` ends as ``b - a`` and ``sc`` as ``e^b``. Reverse: ``sa`` ends as ``a - b`` and ``sb`` as
    ``e^b``. ``ea`` may be ``sa`` (forward), ``sc`` (reverse) or rows of the gradient buffer.
    """
    st[0] = src_s.amax(-1)
    st[1] = src_t.amax(-1)
    torch.sub(src_s, st[0].unsqueeze(-1), out=sa)
    torch.sub(src_t, st[1].unsqueeze(-1), out=sb)
    if inv_t != 1.0:
        sa.mul_(inv_t)
        sb.mul_(inv_t)
    if reverse:
        torch.exp(sa, out=ea)
        sa.sub_(sb)  # a - b
        st[4] = _rowdot(ea, sa)
        st[2] = ea.sum(-1)
        st[3] = sb.exp_().sum(-1)
    else:
        torch.exp(sb, out=sc)  # e^b
        sb.sub_(sa)  # b - a
        st[4] = _rowdot(sc, sb)
        st[3] = sc.sum(-1)
        torch.exp(sa, out=ea)
        st[2] = ea.sum(-1)


def _split_gradient(s_all, t_all, stats, grad, direct: bool, bufs, rows: int, inv_t: float, reverse: bool,
                    combined) -> None:
    """Second pass under TP: this rank's gradient rows from the combined statistics (e^a kept in ``grad`` if fp32)."""
    kl, z_s, z_t, gms, gmt, log_ratio = combined
    ms, mt = stats[0], stats[1]
    ws_t = torch.exp((ms - gms) * inv_t) * inv_t / z_s  # e^a -> q / T for this rank's shift
    wt_t = torch.exp((mt - gmt) * inv_t) * inv_t / z_t
    # reverse: log q - log p - KL = (a - b) + (d_s - d_t) + log z_t - log z_s - KL with this rank's a, b
    shift = ((ms - gms) - (mt - gmt)) * inv_t + log_ratio - kl
    n = s_all.shape[0]
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        sa, sb, sc = (x[:hi - lo] for x in bufs)
        src_s, src_t = s_all[lo:hi], t_all[lo:hi]
        if reverse or not direct:  # a (e^a is in the fp32 gradient rows already)
            torch.sub(src_s, ms[lo:hi].unsqueeze(-1), out=sa)
            if inv_t != 1.0:
                sa.mul_(inv_t)
        torch.sub(src_t, mt[lo:hi].unsqueeze(-1), out=sb)
        if inv_t != 1.0:
            sb.mul_(inv_t)
        ea = grad[lo:hi] if direct else torch.exp(sa, out=sc)
        dst = grad[lo:hi] if direct else sc
        if reverse:
            sa.sub_(sb).add_(shift[lo:hi].unsqueeze(-1))
            sa.mul_(ws_t[lo:hi].unsqueeze(-1))
            torch.mul(ea, sa, out=dst)
        else:
            sb.exp_()
            torch.mul(ea, ws_t[lo:hi].unsqueeze(-1), out=dst)
            dst.addcmul_(sb, -wt_t[lo:hi].unsqueeze(-1))
        if not direct:
            grad[lo:hi] = dst
