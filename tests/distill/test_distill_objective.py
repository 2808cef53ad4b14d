"""Loss objects chosen by name: a new loss is one class + one config line; intermediate pairs on fused (TE) norms.

The fused-norm test builds the Transformer Engine structure on CPU: ``input_layernorm`` /
``pre_mlp_layernorm`` replaced by megatron's ``IdentityOp`` and the norm moved into the next linear
(which then carries ``layer_norm_weight``), exactly as TE's ``LayerNormColumnParallelLinear`` does.
"""

import pytest
import torch

from nemo_minitron.config.model import ConfigError
from nemo_minitron.config.train import KDConfig
from nemo_minitron.distill import losses
from nemo_minitron.distill.objective import LOSSES, LossContext, MinitronKD, TrainingLoss, register, resolve_loss
from nemo_minitron.models.builder import build_gpt_model
from nemo_minitron.runtime import seed_everything
from tests.workers.distill_common import SyntheticData, build_trainer, make_checkpoint, tiny, train_cfg


@register("toy_mse_logits")
class ToyMSELogits(TrainingLoss):
    """A toy KD loss: mean squared difference of the logits (TP=1)."""

    report_keys = ("loss", "toy")

    def forward(self, student_logits, teacher_logits, batch):  # noqa: D102
        per_tok = (student_logits.float() - teacher_logits.float()).pow(2).mean(-1)
        loss = losses.masked_mean(per_tok, batch["loss_mask"])
        return loss, {"loss": loss, "toy": loss * 2}


@pytest.fixture(scope="module")
def ckpts(world, tmp_path_factory):
    work = tmp_path_factory.mktemp("objective")
    make_checkpoint(tiny(num_layers=3, hidden_size=96, ffn_hidden_size=192), work / "teacher", seed=3,
                    output_scale=5.0)
    make_checkpoint(tiny(num_layers=2), work / "student", seed=5)
    return work


@pytest.mark.parametrize("name", ["toy_mse_logits", "tests.distill.test_distill_objective:ToyMSELogits"])
def test_a_new_loss_is_one_class_and_one_config_line(world, ckpts, tmp_path, name):
    cfg = train_cfg("distill", teacher=str(ckpts / "teacher"), max_steps=2, optim="adam", seq=16, mbs=2, gbs=2)
    cfg.kd.loss = name  # the one config line
    cfg.model.restore_from_path = str(ckpts / "student")
    cfg.validate(1)
    tr = build_trainer(cfg, world, tiny(num_layers=2), tmp_path / "run", student_ckpt=ckpts / "student")
    assert isinstance(tr.loss, ToyMSELogits)
    tr.fit()
    tr.close()
    assert [h["step"] for h in tr.history] == [1, 2]
    first, second = tr.history
    assert first["toy"] == pytest.approx(2 * first["loss"])
    # an independent check of step 1's value: the same MSE on plain models
    student, teacher = build_gpt_model(tiny(num_layers=2)), build_gpt_model(tiny(num_layers=3, hidden_size=96,
                                                                                  ffn_hidden_size=192))
    from nemo_minitron.checkpoint import load_checkpoint

    load_checkpoint(student, tiny(num_layers=2), ckpts / "student")
    load_checkpoint(teacher, tiny(num_layers=3, hidden_size=96, ffn_hidden_size=192), ckpts / "teacher")
    b = next(SyntheticData(256, 16, 2).train_iterator(0))
    with torch.no_grad():
        ref = (student(b["tokens"], b["position_ids"], None) - teacher(b["tokens"], b["position_ids"], None)
               ).pow(2).mean()
    assert first["loss"] == pytest.approx(float(ref), rel=1e-5)
    assert second["loss"] < first["loss"]  # it trains


@register("toy_scaled_kl")
class ToyScaledKL(TrainingLoss):
    """A toy KD loss that owns a parameter: a learned scale on the logit KL."""

    report_keys = ("loss",)

    def __init__(self, lc):
        super().__init__(lc)
        self.log_scale = torch.nn.Parameter(torch.full((1,), 0.5))

    def forward(self, student_logits, teacher_logits, batch):  # noqa: D102
        kl = losses.masked_mean(losses.vocab_parallel_logit_kl(student_logits, teacher_logits, self.tp_group),
                                batch["loss_mask"])
        loss = self.log_scale.exp()[0] * kl
        return loss, {"loss": loss}


def test_parameters_of_a_loss_go_through_the_one_optimizer_and_its_clip(world, ckpts, tmp_path):
    """The loss's own parameter is a parameter of the megatron optimizer, counts in the global grad norm and steps."""
    cfg = train_cfg("distill", teacher=str(ckpts / "teacher"), max_steps=1, optim="adam", seq=16, mbs=2, gbs=2)
    cfg.kd.loss = "toy_scaled_kl"
    cfg.trainer.gradient_clip_val = 0.0  # the reported norm is the unclipped one either way
    tr = build_trainer(cfg, world, tiny(num_layers=2), tmp_path / "run", student_ckpt=ckpts / "student")
    param = tr.loss.log_scale
    before = param.detach().clone()
    assert any(p is param for g in tr.optimizer.param_groups for p in g["params"])
    scalars = tr.train_step([next(SyntheticData(256, 16, 2).train_iterator(0))])
    student_sq = sum(float(p.main_grad.double().pow(2).sum()) for p in tr.student.parameters())
    own_sq = float(param.main_grad.double().pow(2).sum())
    assert own_sq > 1e-6
    assert scalars["grad_norm"] == pytest.approx((student_sq + own_sq) ** 0.5, rel=1e-6)
    assert not torch.equal(param.detach(), before)  # stepped by the same optimizer
    tr.close()


def test_unknown_loss_names_the_key():
    with pytest.raises(ConfigError, match="kd.loss='nope'.*minitron"):
        resolve_loss("nope")
    with pytest.raises(ConfigError, match="kd.loss='os:path'"):
        resolve_loss("os:path")
    assert {"lm", "logits_kl", "minitron"} <= set(LOSSES)


# ----------------------------------------------------------------------------- fused norms (TE structure)


class _FusedNormLinear(torch.nn.Module):
    """``norm`` folded into ``linear`` the way TE's LayerNormColumnParallelLinear does it."""

    def __init__(self, norm, linear):
        super().__init__()
        self.norm, self.linear = norm, linear
        self.layer_norm_weight = norm.weight

    def forward(self, x):  # noqa: D102
        return self.linear(self.norm(x))


def _fuse_norms(model, cfg):
    """The TE layout of ``model`` (same weights): IdentityOp norms, norm weights on linear_qkv / linear_fc1."""
    from megatron.core.transformer.identity_op import IdentityOp

    fused = build_gpt_model(cfg)
    fused.load_state_dict(model.state_dict())
    for layer in fused.decoder.layers:
        layer.self_attention.linear_qkv = _FusedNormLinear(layer.input_layernorm, layer.self_attention.linear_qkv)
        layer.mlp.linear_fc1 = _FusedNormLinear(layer.pre_mlp_layernorm, layer.mlp.linear_fc1)
        layer.input_layernorm = IdentityOp()
        layer.pre_mlp_layernorm = IdentityOp()
    return fused


def _kd_loss(student, teacher, scfg, tcfg, pairs, batch):
    lc = LossContext(kd=KDConfig(intermediate_pairs=pairs), tp_group=None, student=student, teacher=teacher,
                     student_cfg=scfg, teacher_cfg=tcfg)
    loss_obj = MinitronKD(lc)
    s_logits = student(batch["tokens"], batch["position_ids"], None)
    with torch.no_grad():
        t_logits = teacher(batch["tokens"], batch["position_ids"], None)
    loss, report = loss_obj(s_logits, t_logits, batch)
    loss.backward()
    loss_obj.close()
    return float(report["intermediate_loss"]), float(loss), loss_obj


def test_pairs_on_fused_norms_equal_the_unfused_model(world):
    scfg, tcfg = tiny(num_layers=2, hidden_size=64), tiny(num_layers=3, hidden_size=64)
    seed_everything(7)
    student, teacher = build_gpt_model(scfg), build_gpt_model(tcfg)
    with torch.no_grad():  # non-trivial norm weights, different per layer
        for m in (student, teacher):
            for layer in m.decoder.layers:
                layer.input_layernorm.weight.uniform_(0.5, 1.5)
                layer.pre_mlp_layernorm.weight.uniform_(0.5, 1.5)
    f_student, f_teacher = _fuse_norms(student, scfg), _fuse_norms(teacher, tcfg)
    b = next(SyntheticData(256, 12, 2).train_iterator(0))
    with torch.no_grad():  # the fused layout computes the same model
        torch.testing.assert_close(f_student(b["tokens"], b["position_ids"], None),
                                   student(b["tokens"], b["position_ids"], None))
    pairs = [["decoder.layers.0.input_layernorm", "decoder.layers.1.input_layernorm"],
             ["decoder.layers.1.pre_mlp_layernorm", "decoder.layers.2.pre_mlp_layernorm"]]
    inter, total, _ = _kd_loss(student, teacher, scfg, tcfg, pairs, b)
    f_inter, f_total, _ = _kd_loss(f_student, f_teacher, scfg, tcfg, pairs, b)
    assert inter > 1e-3
    assert f_inter == pytest.approx(inter, rel=1e-5) and f_total == pytest.approx(total, rel=1e-5)
    # gradients reach the (fused) norm weight through the recomputed norm, as in the unfused model
    g = student.decoder.layers[0].input_layernorm.weight.grad
    fg = f_student.decoder.layers[0].self_attention.linear_qkv.layer_norm_weight.grad
    assert g.abs().max() > 0
    torch.testing.assert_close(fg, g, rtol=1e-4, atol=1e-7)


def test_pair_on_an_identity_without_a_fused_norm_is_refused(world):
    from megatron.core.transformer.identity_op import IdentityOp

    scfg = tiny(num_layers=2)
    seed_everything(1)
    student, teacher = build_gpt_model(scfg), build_gpt_model(scfg)
    student.decoder.layers[0].input_layernorm = IdentityOp()  # a norm-free layer: nothing to recompute
    lc = LossContext(kd=KDConfig(intermediate_pairs=[["decoder.layers.0.input_layernorm"] * 2]), tp_group=None,
                     student=student, teacher=teacher, student_cfg=scfg, teacher_cfg=scfg)
    with pytest.raises(ConfigError, match="identity"):
        MinitronKD(lc)
