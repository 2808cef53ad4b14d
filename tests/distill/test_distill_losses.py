"""KD loss math: reference values, gradients, top-k, balancing, masked reduction (single process)."""

import math

import pytest
import torch
import torch.nn.functional as F

from nemo_minitron.distill import chunked_kl, losses


def _logits(seed, shape=(3, 5, 32), scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


def test_forward_kl_matches_kl_div_and_is_zero_for_equal_inputs():
    s, t = _logits(0), _logits(1)
    ref = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(losses.logit_kl(s, t), ref, rtol=1e-6, atol=1e-6)
    assert losses.logit_kl(t, t).abs().max() < 1e-6
    assert (losses.logit_kl(s, t) > 0).all()


def test_reverse_temperature_and_t2():
    s, t = _logits(2), _logits(3)
    T = 2.5
    log_q, log_p = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    rev = (log_q.exp() * (log_q - log_p)).sum(-1)
    torch.testing.assert_close(losses.logit_kl(s, t, temperature=T, reverse=True), rev)
    torch.testing.assert_close(losses.logit_kl(s, t, temperature=T, reverse=True, scale_by_t2=True), rev * T * T)
    assert not torch.allclose(losses.logit_kl(s, t, reverse=True), losses.logit_kl(s, t))
    with pytest.raises(ValueError, match="kd.temperature"):
        losses.logit_kl(s, t, temperature=0.0)


def test_top_k_restricts_to_teacher_top_tokens():
    s, t = _logits(4), _logits(5)
    k = 6
    vals, idx = t.topk(k, -1)
    log_p = F.log_softmax(vals, -1)
    log_q = F.log_softmax(s.gather(-1, idx), -1)
    ref = (log_p.exp() * (log_p - log_q)).sum(-1)
    torch.testing.assert_close(losses.logit_kl(s, t, top_k=k), ref)
    # k = V is the full softmax
    torch.testing.assert_close(losses.logit_kl(s, t, top_k=32), losses.logit_kl(s, t), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="kd.top_k"):
        losses.logit_kl(s, t, top_k=33)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("split", [False, True], ids=["unsplit", "split_path"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_kl_value_and_gradient_equal_autograd(world, reverse, split, dtype):
    """Both code paths of the chunked KL (the split one on a 1-rank group), several chunks: dense autograd's values."""
    import torch.distributed as dist

    group = dist.new_group([0]) if split else None
    s = _logits(6).to(dtype).requires_grad_(True)
    t = _logits(7).to(dtype)
    T = 1.7
    out = chunked_kl.ChunkedKL.apply(s, t, T, reverse, group, 7 * 32)  # chunks of 7 rows, the last one shorter
    w = torch.rand(out.shape, generator=torch.Generator().manual_seed(0))
    (out * w).sum().backward()
    s2 = s.detach().float().requires_grad_(True)
    ref = losses.logit_kl(s2, t.float(), temperature=T, reverse=reverse)
    (ref * w).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(s.grad.float(), s2.grad, **tol)


@pytest.mark.parametrize("reverse", [False, True])
def test_shard_statistics_combine_to_the_dense_kl(reverse):
    """Three vocabulary shards of unequal scale: per-shard chunk statistics combined = dense KL (no processes)."""
    g = torch.Generator().manual_seed(11)
    s = torch.randn(6, 48, generator=g) * 4
    t = torch.randn(6, 48, generator=g) * 4
    t[:, 32:] += 25.0  # the teacher's mass sits on the last shard: the rescaling of the other shards matters
    T = 0.8
    parts = []
    for lo in (0, 16, 32):
        shard_s, shard_t = s[:, lo:lo + 16], t[:, lo:lo + 16]
        st = torch.empty(5, 6)
        a, b, c = (torch.empty(6, 16) for _ in range(3))
        chunked_kl._chunk(shard_s, shard_t, st, a, b, c, c if reverse else a, 1 / T, reverse)
        parts.append(st)
    kl = chunked_kl.combine_shards(torch.stack(parts), 1 / T, reverse)[0]
    torch.testing.assert_close(kl, losses.logit_kl(s, t, temperature=T, reverse=reverse), rtol=1e-5, atol=1e-5)


def test_hidden_state_losses():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    torch.testing.assert_close(losses.hidden_state_loss(a, b, "cosine"), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(losses.hidden_state_loss(a, b, "mse"), torch.tensor([2.5, 1.0]))
    with pytest.raises(ValueError, match="kd.intermediate_loss"):
        losses.hidden_state_loss(a, b, "l1")


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 1]])
    assert float(losses.masked_mean(x, m)) == pytest.approx(3.0)
    assert float(losses.masked_mean(x, torch.zeros_like(m))) == 0.0


def test_balance_losses():
    lm, kl, inter = torch.tensor(4.0, requires_grad=True), torch.tensor(0.5, requires_grad=True), \
        torch.tensor(0.25, requires_grad=True)
    out = losses.balance_losses(lm, kl, inter, skip_lm_loss=True)
    # intermediate rescaled to the logit loss magnitude: total = 0.5 + 0.25 * 2
    assert float(out["loss"]) == pytest.approx(1.0)
    out["loss"].backward()
    assert float(kl.grad) == pytest.approx(1.0) and float(inter.grad) == pytest.approx(2.0)
    assert lm.grad is None
    mixed = losses.balance_losses(lm, kl, None, skip_lm_loss=False, kd_loss_scale=2.0)
    # lm + 2 * kd * (lm / kd) = 4 + 2 * 4
    assert float(mixed["loss"]) == pytest.approx(12.0)
    assert float(mixed["intermediate_loss"]) == 0.0


def test_lr_schedule():
    from nemo_minitron.train.lr import lr_at

    assert lr_at(0, 1e-3, 1e-5, 4, 20) == pytest.approx(2.5e-4)
    assert lr_at(3, 1e-3, 1e-5, 4, 20) == pytest.approx(1e-3)
    assert lr_at(12, 1e-3, 1e-5, 4, 20) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi / 2)))
    assert lr_at(20, 1e-3, 1e-5, 4, 20) == pytest.approx(1e-5)
    assert lr_at(99, 1e-3, 1e-5, 4, 20) == pytest.approx(1e-5)
    assert lr_at(50, 1e-3, 1e-5, 0, 20, "constant") == pytest.approx(1e-3)


@pytest.mark.parametrize("kw", [{}, {"reverse": True, "temperature": 1.5, "scale_by_t2": True}])
def test_unsplit_vocab_parallel_path_equals_dense(kw):
    """tp_group=None uses the analytic (memory-saving) function; same value and gradient as autograd."""
    s, t = _logits(8).requires_grad_(True), _logits(9)
    val = losses.vocab_parallel_logit_kl(s, t, None, **kw)
    val.sum().backward()
    s2 = s.detach().clone().requires_grad_(True)
    ref = losses.logit_kl(s2, t, **kw)
    ref.sum().backward()
    torch.testing.assert_close(val, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reverse", [False, True])
def test_default_chunks_of_a_large_vocabulary_and_bf16_logits(reverse):
    """Default chunking (at least KL_CHUNK_MIN_ROWS rows: 3 chunks here) and a bf16 gradient buffer."""
    vocab = 1 << 16
    rows = losses.kl_chunk_elements(torch.device("cpu"), vocab) // vocab
    assert rows == losses.KL_CHUNK_MIN_ROWS
    g = torch.Generator().manual_seed(3)
    s = (torch.randn(2, 10, vocab, generator=g) * 3).bfloat16().requires_grad_(True)
    t = (torch.randn(2, 10, vocab, generator=g) * 5).bfloat16()
    out = losses.vocab_parallel_logit_kl(s, t, reverse=reverse)
    w = torch.rand(out.shape, generator=g)
    (out * w).sum().backward()
    s2 = s.detach().float().requires_grad_(True)
    ref = losses.logit_kl(s2, t.float(), reverse=reverse)
    (ref * w).sum().backward()
    # KL ~17 nats from fp32 sums over 65536 terms: both sides are within ~1e-4 relative of float64
    torch.testing.assert_close(out, ref, rtol=2e-4, atol=1e-5)
    assert s.grad.dtype == torch.bfloat16
    # bf16 rounding of the gradient; the reverse gradient q (log q - log p - KL) cancels where q is large
    torch.testing.assert_close(s.grad.float(), s2.grad, rtol=1e-2, atol=1e-4 * s2.grad.abs().max().item())
