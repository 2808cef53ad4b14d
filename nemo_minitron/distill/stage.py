"""One pipeline stage of distillation: the (DDP-wrapped) student next to the frozen teacher.

megatron-core's pipeline schedules see a single model chunk. :class:`DistillationStage` is that
chunk: it runs the student and, under ``no_grad``, the teacher stage on the same micro-batch.

* Pipeline parallelism: both models are split into the same stages. A non-last stage returns
  ``cat([student_hidden, teacher_hidden], -1)``, so one tensor of width ``h_s + h_t`` travels between
  stages (:func:`adjust_tensor_shapes` widens megatron's send/receive shapes);
  :meth:`DistillationStage.set_input_tensor` splits it again. Gradients only flow into the student
  half. The last stage returns the student's logits and keeps the teacher's logits (and any
  captured intermediate states) for the loss function.
* Intermediate pairs (``kd.intermediate_pairs``): forward hooks capture the outputs of named
  modules (``decoder.final_layernorm``, ``decoder.layers.<i>.<sub>`` with *global* layer index ``i``);
  they must live on the last stage. A learned linear map (one, shared by all pairs) projects
  student states to the teacher width when the widths differ; it is not part of the student
  checkpoint.
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


class DistillationStage(torch.nn.Module):
    """Student + teacher stage as one megatron model chunk (see module docstring)."""

    def __init__(self, student: torch.nn.Module, teacher: Optional[torch.nn.Module], student_hidden: int,
                 teacher_hidden: int = 0, intermediate_pairs: Optional[list] = None, is_last_stage: bool = True,
                 init_std: float = 0.02, seed: int = 1234):
        super().__init__()
        self.module = student  # the DDP-wrapped student; megatron finds .config through it
        self._teacher = [teacher]  # a list keeps the teacher out of parameters() and state_dict()
        self.student_hidden = student_hidden
        self.teacher_hidden = teacher_hidden
        self.use_teacher = teacher is not None
        self.is_last_stage = is_last_stage
        self.teacher_logits: Optional[torch.Tensor] = None
        self._pairs: list[tuple[_Capture, _Capture]] = []
        self._hooks = []
        self.projection: Optional[torch.nn.Linear] = None
        pairs = list(intermediate_pairs or [])
        if pairs and teacher is not None and is_last_stage:
            s_model, t_model = _unwrap(student), teacher
            for s_name, t_name in pairs:
                cs, ct = _Capture(), _Capture()
                self._hooks.append(resolve_module(s_model, s_name, "student").register_forward_hook(cs))
                self._hooks.append(resolve_module(t_model, t_name, "teacher").register_forward_hook(ct))
                self._pairs.append((cs, ct))
            if student_hidden != teacher_hidden:
                self.projection = torch.nn.Linear(student_hidden, teacher_hidden, bias=True)
                with torch.no_grad():  # own generator: identical init at every parallel layout
                    gen = torch.Generator().manual_seed(seed)
                    self.projection.weight.copy_(torch.randn(self.projection.weight.shape, generator=gen) * init_std)
                    self.projection.bias.zero_()

    @property
    def teacher(self) -> Optional[torch.nn.Module]:
        """The frozen teacher stage (None when finetuning)."""
        return self._teacher[0]

    def set_input_tensor(self, input_tensor) -> None:
        """Receive the previous stage's output; split it between student and teacher."""
        t = input_tensor[0] if isinstance(input_tensor, (list, tuple)) else input_tensor
        student = _unwrap(self.module)
        if t is None or not (self.use_teacher and self.teacher is not None):
            student.set_input_tensor(t)
            if self.teacher is not None:
                self.teacher.set_input_tensor(None)
            return
        s_part, t_part = t.split([self.student_hidden, self.teacher_hidden], dim=-1)
        student.set_input_tensor(s_part)
        self.teacher.set_input_tensor(t_part.detach())

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Student output (logits on the last stage, ``[student | teacher]`` hidden states elsewhere)."""
        out = self.module(tokens, position_ids, None)
        self.teacher_logits = None
        if not (self.use_teacher and self.teacher is not None):
            return out
        with torch.no_grad():
            t_out = self.teacher(tokens, position_ids, None)
        if self.is_last_stage:
            self.teacher_logits = t_out
            return out
        return torch.cat([out, t_out.to(out.dtype)], dim=-1)

    def intermediate_states(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(projected_student_state, teacher_state), ...]`` captured by the last forward."""
        result = []
        for cs, ct in self._pairs:
            if cs.value is None or ct.value is None:
                raise RuntimeError("intermediate states were not captured; did the forward run on this stage?")
            s = cs.value
            if self.projection is not None:
                s = self.projection(s.to(self.projection.weight.dtype))
            result.append((s, ct.value))
            cs.value = ct.value = None
        return result

    def remove_hooks(self) -> None:
        """Detach the capture hooks."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def adjust_tensor_shapes(teacher_hidden: int):
    """``adjust_tensor_shapes_fn`` for megatron's 1F1B schedule: widen P2P shapes by the teacher hidden size."""

    def fn(recv_shapes, send_shapes):
        def widen(shapes):
            return [tuple(s[:-1]) + (s[-1] + teacher_hidden,) for s in shapes]

        return widen(recv_shapes), widen(send_shapes)

    return fn
