"""The trainer's loss and gradients equal an independent dense computation on plain (unwrapped) models.

Guards the loss plumbing around megatron (DDP, schedules, vocab-parallel CE that overwrites its input)
rather than the loss math itself (tests/distill/test_distill_losses.py).
"""

import pytest
import torch
import torch.nn.functional as F

from nemo_minitron.checkpoint import load_checkpoint
from nemo_minitron.distill import losses
from nemo_minitron.models.builder import build_gpt_model
from tests.workers.distill_common import SyntheticData, build_trainer, make_checkpoint, tiny, train_cfg


@pytest.fixture(scope="module")
def ckpts(world, tmp_path_factory):
    work = tmp_path_factory.mktemp("kd_loss")
    make_checkpoint(tiny(num_layers=3, hidden_size=96, ffn_hidden_size=192), work / "teacher", seed=3,
                    output_scale=20.0)
    make_checkpoint(tiny(num_layers=2), work / "student", seed=5)
    return work


def _batch():
    data = SyntheticData(256, 24, 2)
    b = next(data.train_iterator(0))
    b["loss_mask"][0, :5] = 0  # masking must matter
    b["loss_mask"][1, -3:] = 0
    return b


def _reference(work, mode, kd):
    student = build_gpt_model(tiny(num_layers=2))
    load_checkpoint(student, tiny(num_layers=2), work / "student")
    b = _batch()
    mask = b["loss_mask"]
    logits = student(b["tokens"], b["position_ids"], None).float()
    lm = losses.masked_mean(F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), reduction="none")
                            .view_as(mask), mask)
    if mode == "finetune":
        total = lm
    else:
        tcfg = tiny(num_layers=3, hidden_size=96, ffn_hidden_size=192)
        teacher = build_gpt_model(tcfg)
        load_checkpoint(teacher, tcfg, work / "teacher")
        with torch.no_grad():
            t_logits = teacher.eval()(b["tokens"], b["position_ids"], None).float()
        kl = losses.masked_mean(losses.logit_kl(logits, t_logits, kd.get("temperature", 1.0), kd.get("reverse_kl", False),
                                                kd.get("scale_by_t2", False)), mask)
        total = losses.balance_losses(lm, kl, None, kd.get("skip_lm_loss", True), kd.get("kd_loss_scale", 1.0))["loss"]
    total.backward()
    return float(total), {n: p.grad.clone() for n, p in student.named_parameters()}


@pytest.mark.parametrize("mode,kd", [
    ("distill", {}),
    ("distill", {"temperature": 2.0, "scale_by_t2": True, "reverse_kl": True, "skip_lm_loss": False,
                 "kd_loss_scale": 2.0}),
    ("finetune", {}),
])
def test_step_loss_and_grads_match_dense_reference(world, ckpts, mode, kd):
    ref_loss, ref_grads = _reference(ckpts, mode, kd)
    cfg = train_cfg(mode, teacher=str(ckpts / "teacher") if mode == "distill" else None, optim="adam", seq=24, **kd)
    cfg.trainer.gradient_clip_val = 0.0
    tr = build_trainer(cfg, world, tiny(num_layers=2), ckpts / f"run_{mode}_{len(kd)}", student_ckpt=ckpts / "student")
    scalars = tr.train_step([_batch()])
    assert scalars["loss"] == pytest.approx(ref_loss, rel=1e-5)
    grads = {n: p.main_grad for n, p in tr.student.named_parameters()}
    for name in ("output_layer.weight", "decoder.layers.0.mlp.linear_fc1.weight", "embedding.word_embeddings.weight"):
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-7)
    tr.close()


@pytest.mark.parametrize("optim", ["adam", "distributed_fused_adam"])
def test_weight_decay_skips_norms_and_biases(world, tmp_path, optim):
    """One optimizer step with weight_decay > 0: norm weights and biases get the pure Adam update, matrices decay.

    First Adam step: ``m_hat = g``, ``v_hat = g**2``, so the update is ``lr * g / (|g| + eps)``; decoupled
    weight decay adds ``lr * wd * p``.
    """
    lr, wd, eps = 1e-2, 0.5, 1e-8
    scfg = tiny(num_layers=2, add_bias_linear=True, add_qkv_bias=True)
    cfg = train_cfg("finetune", optim=optim, seq=24)
    cfg.model.optim.lr, cfg.model.optim.weight_decay, cfg.model.optim.eps = lr, wd, eps
    cfg.model.optim.sched.name, cfg.model.optim.sched.warmup_steps, cfg.model.optim.sched.min_lr = "constant", 0, lr
    cfg.trainer.gradient_clip_val = 0.0
    tr = build_trainer(cfg, world, scfg, tmp_path / "run")
    params = dict(tr.student.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    tr.train_step([_batch()])
    names = {"norm": "decoder.layers.0.input_layernorm.weight", "bias": "decoder.layers.0.mlp.linear_fc1.bias",
             "qkv_bias": "decoder.layers.1.self_attention.linear_qkv.bias",
             "final_norm": "decoder.final_layernorm.weight", "matrix": "decoder.layers.0.mlp.linear_fc1.weight",
             "embedding": "embedding.word_embeddings.weight"}
    for kind, name in names.items():
        g = params[name].main_grad
        assert g.abs().max() > 0, name
        adam = lr * g / (g.abs() + eps)
        decay = lr * wd * before[name] if kind in ("matrix", "embedding") else 0.0
        torch.testing.assert_close(params[name].detach(), before[name] - adam - decay, rtol=0, atol=1e-6,
                                   msg=lambda m, n=name: f"{n}: {m}")
    tr.close()


def test_the_trainer_has_no_distillation_branches():
    """Distillation lives in the loss object and the model chunk; the loop has no mode / teacher switches."""
    import inspect

    from nemo_minitron.train import trainer

    code = "\n".join(line.split("#")[0] for line in inspect.getsource(trainer).splitlines()
                     if not line.strip().startswith(('"', "'", "``")))
    for word in ("mode ==", "use_teacher", "cfg.kd", "kd_", "intermediate", "projection", "torch.optim."):
        assert word not in code, word
