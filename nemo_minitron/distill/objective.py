"""Training objectives: loss objects chosen by name (``kd.loss``) from a small registry.

The trainer knows nothing about distillation. It runs a model chunk (:class:`~nemo_minitron.distill.stage.
DistillationStage`, which returns ``(student_logits, teacher_logits)`` on the last pipeline stage) and
calls a :class:`TrainingLoss` on that output and the micro-batch. A loss object computes the scalar to
back-propagate and a report of detached scalars; any parameters it owns (e.g. the projection of an
intermediate-state loss) are trained and checkpointed with it.

Adding a loss is one class and one config line::

    @register("my_kl")
    class MyKL(TrainingLoss):
        report_keys = ("loss",)

        def forward(self, student_logits, teacher_logits, batch):
            kl = vocab_parallel_logit_kl(student_logits, teacher_logits, self.tp_group)
            loss = masked_mean(kl, batch["loss_mask"])
            return loss, {"loss": loss}

and ``kd.loss=my_kl`` (or ``kd.loss=my_package.my_module:MyKL`` for a class in a module that is not
imported yet). Registered here:

* ``lm``: the student's LM loss (finetuning, teacher correction, LM-only baselines);
* ``logits_kl``: logit KL only (forward/reverse, temperature, ``T**2`` scaling, top-k: ``kd.*``);
* ``minitron`` (default): logit KL + intermediate-state losses (``kd.intermediate_pairs``) with the
  dynamic balancer, optionally mixed with the LM loss (``kd.skip_lm_loss=false``, ``kd.kd_loss_scale``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Optional

import torch

from nemo_minitron.config.model import ConfigError
from nemo_minitron.distill import losses
from nemo_minitron.distill.stage import capture

#: Registered loss classes by name.
LOSSES: dict[str, type["TrainingLoss"]] = {}


def register(name: str):
    """Class decorator: make a :class:`TrainingLoss` subclass selectable as ``kd.loss=<name>``."""

    def deco(cls):
        if name in LOSSES and LOSSES[name] is not cls:
            raise ValueError(f"a training loss named {name!r} is already registered ({LOSSES[name].__qualname__})")
        LOSSES[name] = cls
        cls.registered_name = name
        return cls

    return deco


def resolve_loss(name: str) -> type["TrainingLoss"]:
    """The class for ``kd.loss``: a registered name or ``package.module:ClassName``."""
    if name in LOSSES:
        return LOSSES[name]
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"kd.loss={name!r}: cannot import it ({e})") from None
        if not (isinstance(cls, type) and issubclass(cls, TrainingLoss)):
            raise ConfigError(f"kd.loss={name!r} is not a TrainingLoss subclass")
        return cls
    raise ConfigError(f"kd.loss={name!r} is not a registered loss; choose one of {sorted(LOSSES)} "
                      "or give package.module:ClassName")


@dataclass
class LossContext:
    """What a loss object may use when it is built (models are this rank's unwrapped stages)."""

    kd: Any
    """The ``kd.*`` settings (:class:`~nemo_minitron.config.train.KDConfig`)."""
    tp_group: Any
    """Tensor-parallel process group (logits are vocab-parallel over it); None when TP = 1."""
    student: torch.nn.Module
    """The student stage (unwrapped)."""
    teacher: Optional[torch.nn.Module]
    """The frozen teacher stage, or None for losses that do not need one."""
    student_cfg: Any
    """Student :class:`~nemo_minitron.config.model.ModelConfig`."""
    teacher_cfg: Any
    """Teacher :class:`~nemo_minitron.config.model.ModelConfig` (None without a teacher)."""
    is_last_stage: bool = True
    """Whether this rank holds the last pipeline stage (the only one that computes the loss)."""
    seed: int = 1234
    """Seed for parameters the loss owns (identical at every parallel layout)."""


class TrainingLoss(torch.nn.Module):
    """Base class: ``forward(student_logits, teacher_logits, batch) -> (loss, report)``.

    ``student_logits`` / ``teacher_logits`` are vocab-parallel ``[b, s, V/tp]`` (``teacher_logits`` is
    None when :attr:`needs_teacher` is False). ``batch`` has ``tokens``, ``labels``, ``loss_mask``,
    ``position_ids``. ``report`` maps each name of :attr:`report_keys` to a 0-d tensor (no host syncs:
    the trainer detaches, averages and logs them once per step).

    Parameters of the loss object (e.g. a projection) are trained by the run's one megatron optimizer
    (same DDP buffers, global gradient clip, distributed-optimizer state) and saved with the train
    state; they are assumed replicated over tensor- and data-parallel ranks unless the class defines
    ``sharded_state_dict``. Models from :class:`LossContext` are hooked, never stored as submodules.
    """

    needs_teacher: bool = True
    """False for losses that train on the data alone (no teacher is run)."""
    report_keys: tuple[str, ...] = ("loss",)
    """Names of the reported scalars, ``loss`` first; the same on every rank."""

    def __init__(self, lc: LossContext):
        super().__init__()
        self.kd = lc.kd
        self.tp_group = lc.tp_group
        self._teacher = [lc.teacher if self.needs_teacher else None]  # a list: not a submodule, never trained

    @property
    def teacher(self) -> Optional[torch.nn.Module]:
        """The frozen teacher stage the model chunk runs next to the student (None without one)."""
        return self._teacher[0]

    def close(self) -> None:
        """Release hooks or other resources (called once when training ends)."""


def lm_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Masked mean of megatron's vocab-parallel cross-entropy (on a copy: it overwrites its input)."""
    from megatron.core import tensor_parallel

    tok = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), batch["labels"])
    return losses.masked_mean(tok, batch["loss_mask"])


@register("lm")
class LMLoss(TrainingLoss):
    """The student's LM (next-token cross-entropy) loss; no teacher."""

    needs_teacher = False
    report_keys = ("loss", "lm_loss")

    def forward(self, student_logits, teacher_logits, batch):  # noqa: D102
        lm = lm_loss(student_logits, batch)
        return lm, {"loss": lm, "lm_loss": lm}


@register("logits_kl")
class LogitsKL(TrainingLoss):
    """Logit KL against the teacher (``kd.temperature``, ``kd.reverse_kl``, ``kd.scale_by_t2``, ``kd.top_k``)."""

    report_keys = ("loss", "logits_loss")

    def logits_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Masked mean of the per-token KL."""
        kd = self.kd
        kl = losses.vocab_parallel_logit_kl(student_logits, teacher_logits, self.tp_group, kd.temperature,
                                            kd.reverse_kl, kd.scale_by_t2, kd.top_k)
        return losses.masked_mean(kl, batch["loss_mask"])

    def forward(self, student_logits, teacher_logits, batch):  # noqa: D102
        kl = self.logits_loss(student_logits, teacher_logits, batch)
        return kl, {"loss": kl, "logits_loss": kl}


class IntermediateStates(torch.nn.Module):
    """Captures ``kd.intermediate_pairs`` on both models; owns the student->teacher projection.

    Norm names (``input_layernorm`` / ``pre_mlp_layernorm``) give the post-norm states on the local and
    the Transformer Engine spec alike (under TE the norm is fused into the next linear and recomputed).
    One learned linear map, shared by all pairs, projects student states to the teacher width when they
    differ; it is trained with the student but is not part of the student checkpoint.
    """

    def __init__(self, lc: LossContext, init_std: float = 0.02):
        super().__init__()
        self._pairs = []
        self._hooks: list = []
        self.kind = lc.kd.intermediate_loss
        pairs = list(lc.kd.intermediate_pairs or [])
        if not (pairs and lc.is_last_stage):
            self.projection = None
            return
        for s_name, t_name in pairs:
            cs = capture(lc.student, s_name, "student", lc.student_cfg, self._hooks)
            ct = capture(lc.teacher, t_name, "teacher", lc.teacher_cfg, self._hooks)
            self._pairs.append((cs, ct))
        s_h, t_h = lc.student_cfg.hidden_size, lc.teacher_cfg.hidden_size
        self.projection = None
        if s_h != t_h:
            self.projection = torch.nn.Linear(s_h, t_h, bias=True)
            with torch.no_grad():  # own generator: identical init at every parallel layout
                gen = torch.Generator().manual_seed(lc.seed)
                self.projection.weight.copy_(torch.randn(self.projection.weight.shape, generator=gen) * init_std)
                self.projection.bias.zero_()

    def __len__(self) -> int:
        return len(self._pairs)

    def loss(self, mask: torch.Tensor) -> Optional[torch.Tensor]:
        """Mean over pairs of the masked per-token hidden-state loss (None without pairs)."""
        if not self._pairs:
            return None
        per_pair = []
        for cs, ct in self._pairs:
            if cs.value is None or ct.value is None:
                raise RuntimeError("intermediate states were not captured; did the forward run on this stage?")
            s = cs.value
            if self.projection is not None:
                s = self.projection(s.to(self.projection.weight.dtype))
            # captured states are [s, b, h]; the mask is [b, s]
            per_pair.append(losses.masked_mean(losses.hidden_state_loss(s, ct.value, self.kind), mask.t()))
            cs.value = ct.value = None
        return torch.stack(per_pair).mean()

    def close(self) -> None:
        """Detach the capture hooks."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


@register("minitron")
class MinitronKD(LogitsKL):
    """Minitron's KD loss: logit KL + balanced intermediate losses, optionally mixed with the LM loss."""

    def __init__(self, lc: LossContext):
        super().__init__(lc)
        self.intermediate = IntermediateStates(lc)
        keys = ["loss", "kd_loss", "logits_loss"]
        if lc.kd.intermediate_pairs:  # from the config, not the hooks: equal on every pipeline stage
            keys.append("intermediate_loss")
        if not lc.kd.skip_lm_loss:
            keys.append("lm_loss")
        self.report_keys = tuple(keys)

    def forward(self, student_logits, teacher_logits, batch):  # noqa: D102
        kl = self.logits_loss(student_logits, teacher_logits, batch)
        inter = self.intermediate.loss(batch["loss_mask"])
        # the LM loss only when it is trained on: no logging-only cross-entropy with skip_lm_loss
        lm = None if self.kd.skip_lm_loss else lm_loss(student_logits, batch)
        out = losses.balance_losses(lm, kl, inter, self.kd.skip_lm_loss, self.kd.kd_loss_scale)
        return out["loss"], {k: out[k] for k in self.report_keys}

    def close(self) -> None:  # noqa: D102
        self.intermediate.close()


def loss_name(cfg) -> str:
    """The loss ``cfg`` trains on: ``lm`` for ``mode=finetune``, else ``kd.loss``."""
    return "lm" if cfg.mode == "finetune" else cfg.kd.loss


def build_loss(cfg, ctx, student: torch.nn.Module, student_cfg, teacher: Optional[torch.nn.Module] = None,
               teacher_cfg=None) -> TrainingLoss:
    """The loss object for ``cfg`` (a :class:`~nemo_minitron.config.train.TrainConfig`) on ``ctx``'s device.

    ``student`` / ``teacher`` are this rank's (unwrapped) stages; the teacher is kept by the loss only
    when it needs one (:attr:`TrainingLoss.teacher`).
    """
    cls = resolve_loss(loss_name(cfg))
    if cls.needs_teacher and teacher is None:
        raise ConfigError(f"kd.loss={cls.__name__} needs a teacher (model.kd_teacher_restore_from_path)")
    lc = LossContext(kd=cfg.kd, tp_group=ctx.tp_group if ctx.tp_size > 1 else None, student=student,
                     teacher=teacher if cls.needs_teacher else None, student_cfg=student_cfg,
                     teacher_cfg=teacher_cfg, is_last_stage=ctx.is_last_stage, seed=student_cfg.seed)
    return cls(lc).to(ctx.device)
