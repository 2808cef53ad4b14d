"""One pipeline stage of distillation: the (DDP-wrapped) student next to the frozen teacher.

megatron-core's pipeline schedules see a single model chunk. :class:`DistillationStage` is that
chunk: it runs the student and, under ``no_grad``, the teacher stage on the same micro-batch, and
returns both outputs; a loss object (:mod:`nemo_minitron.distill.objective`) makes the loss.

* Pipeline parallelism: both models are split into the same stages. A non-last stage returns
  ``cat([student_hidden, teacher_hidden], -1)``, so one tensor of width ``h_s + h_t`` travels between
  stages (:func:`adjust_tensor_shapes` widens megatron's send/receive shapes);
  :meth:`DistillationStage.set_input_tensor` splits it again. Gradients only flow into the student
  half. The last stage returns ``(student_logits, teacher_logits)``.
* Intermediate states (:func:`capture`): hooks capture the outputs of named modules
  (``decoder.final_layernorm``, ``decoder.layers.<i>.<sub>`` with *global* layer index ``i``); they
  must live on the last stage.
"""

from __future__ import annotations

import re
from typing import Optional

import torch

from nemo_minitron.config.model import ConfigError


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):
        model = model.module
    return model


def resolve_module(model: torch.nn.Module, name: str, role: str) -> torch.nn.Module:
    """The submodule of a GPT stage named ``name``; ``decoder.layers.<i>`` uses the *global* layer index."""
    m = re.match(r"^decoder\.layers\.(\d+)(\.(.+))?$", name)
    if m:
        wanted = int(m.group(1)) + 1  # megatron's layer_number is global and 1-based
        for layer in model.decoder.layers:
            if layer.layer_number == wanted:
                return layer.get_submodule(m.group(3)) if m.group(3) else layer
        raise ConfigError(
            f"kd.intermediate_pairs: {role} module {name!r} is not on the last pipeline stage (or does not "
            "exist); intermediate pairs must name modules of the last stage"
        )
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"kd.intermediate_pairs: {role} has no module {name!r}") from None


class _Capture:
    """Forward hook that stores the last output of a module (first element of a tuple)."""

    def __init__(self) -> None:
        self.value: Optional[torch.Tensor] = None

    def __call__(self, module, args, output) -> None:
        self.value = output[0] if isinstance(output, (tuple, list)) else output


#: Norm submodules of a layer -> the linear that fuses them under the Transformer Engine spec.
FUSED_NORMS = {"input_layernorm": ("self_attention", "linear_qkv"), "pre_mlp_layernorm": ("mlp", "linear_fc1")}


def capture(model: torch.nn.Module, name: str, role: str, model_cfg, hooks: list) -> _Capture:
    """Hook ``name`` of ``model`` and return the capture holding its output after each forward.

    ``decoder.layers.<i>.input_layernorm`` / ``pre_mlp_layernorm`` capture the *post-norm* states on
    both specs: under Transformer Engine these modules are ``IdentityOp`` (the norm is fused into
    ``linear_qkv`` / ``linear_fc1``), so the norm is recomputed from the fused linear's input and its
    ``layer_norm_weight`` (the same function as the pruning hooks). Gradients flow through the recompute.
    """
    from megatron.core.transformer.identity_op import IdentityOp

    from nemo_minitron.models.names import fused_norm_output

    module = resolve_module(model, name, role)
    cap = _Capture()
    if not isinstance(module, IdentityOp):
        hooks.append(module.register_forward_hook(cap))
        return cap
    parent_name, _, leaf = name.rpartition(".")
    fused = None
    if leaf in FUSED_NORMS and parent_name:
        layer = resolve_module(model, parent_name, role)
        fused = getattr(getattr(layer, FUSED_NORMS[leaf][0], None), FUSED_NORMS[leaf][1], None)
    if fused is None or not hasattr(fused, "layer_norm_weight"):
        raise ConfigError(f"kd.intermediate_pairs: {role} module {name!r} is an identity (no norm) in this model; "
                          "name a module that computes something, e.g. decoder.final_layernorm")
    norm, eps = model_cfg.normalization, model_cfg.layernorm_epsilon

    def pre_hook(m, args):
        cap.value = fused_norm_output(m, args[0], norm, eps)

    hooks.append(fused.register_forward_pre_hook(pre_hook))
    return cap


class DistillationStage(torch.nn.Module):
    """Student + teacher stage as one megatron model chunk (see module docstring)."""

    def __init__(self, student: torch.nn.Module, teacher: Optional[torch.nn.Module] = None,
                 is_last_stage: bool = True, pp_size: int = 1):
        super().__init__()
        self.module = student  # the DDP-wrapped student; megatron finds .config through it
        self._teacher = [teacher]  # a list keeps the teacher out of parameters() and state_dict()
        self.student_hidden = _unwrap(student).config.hidden_size
        self.teacher_hidden = teacher.config.hidden_size if teacher is not None else 0
        self.is_last_stage = is_last_stage
        self.pp_size = pp_size

    @property
    def teacher(self) -> Optional[torch.nn.Module]:
        """The frozen teacher stage (None when the loss needs none)."""
        return self._teacher[0]

    def train(self, mode: bool = True) -> "DistillationStage":
        """Set the student's mode; the teacher always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def schedule_kwargs(self) -> dict:
        """Extra arguments for megatron's forward-backward function (wider P2P shapes with a teacher under PP)."""
        if self.pp_size > 1 and self.teacher is not None:
            return {"adjust_tensor_shapes_fn": adjust_tensor_shapes(self.teacher_hidden)}
        return {}

    def set_input_tensor(self, input_tensor) -> None:
        """Receive the previous stage's output; split it between student and teacher."""
        t = input_tensor[0] if isinstance(input_tensor, (list, tuple)) else input_tensor
        student = _unwrap(self.module)
        if t is None or self.teacher is None:
            student.set_input_tensor(t)
            if self.teacher is not None:
                self.teacher.set_input_tensor(None)
            return
        s_part, t_part = t.split([self.student_hidden, self.teacher_hidden], dim=-1)
        student.set_input_tensor(s_part)
        self.teacher.set_input_tensor(t_part.detach())

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor):
        """``(student_logits, teacher_logits or None)`` on the last stage, ``[student | teacher]`` states elsewhere."""
        out = self.module(tokens, position_ids, None)
        t_out = None
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self.teacher(tokens, position_ids, None)
        if self.is_last_stage:
            return out, t_out
        return out if t_out is None else torch.cat([out, t_out.to(out.dtype)], dim=-1)


def adjust_tensor_shapes(teacher_hidden: int):
    """``adjust_tensor_shapes_fn`` for megatron's 1F1B schedule: widen P2P shapes by the teacher hidden size."""

    def fn(recv_shapes, send_shapes):
        def widen(shapes):
            return [tuple(s[:-1]) + (s[-1] + teacher_hidden,) for s in shapes]

        return widen(recv_shapes), widen(send_shapes)

    return fn
