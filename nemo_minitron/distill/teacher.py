"""The frozen teacher: built at the student's parallel layout, loaded from its own checkpoint, verified.

Peers have shipped runs where the teacher silently kept its random initialisation (Megatron-Bridge
#1422). Here every teacher parameter is first filled with NaN, then loaded; any parameter that still
holds a NaN afterwards was not loaded and the run stops with its name. The teacher never receives
gradients, has no optimizer state, stays in eval mode and is never part of a checkpoint.
"""

from __future__ import annotations

import os

import torch

from nemo_minitron.checkpoint import CheckpointError, load_checkpoint, load_model_config
from nemo_minitron.config.checks import layout_problems
from nemo_minitron.config.model import RUNTIME_FIELDS, ConfigError, ModelConfig
from nemo_minitron.logging import get_logger

log = get_logger(__name__)


class TeacherLoadError(CheckpointError):
    """The teacher checkpoint could not be loaded completely."""


def check_teacher_compatible(student: ModelConfig, teacher: ModelConfig, seq_length: int | None = None) -> None:
    """Raise :class:`ConfigError` when the teacher cannot distil into the student.

    They must share the vocabulary (same ``vocab_size``; a different tokenizer with the same size
    cannot be detected here), the teacher must split into the student's pipeline stages, and it must
    support the training sequence length.
    """
    if teacher.vocab_size != student.vocab_size:
        raise ConfigError(
            f"teacher vocab_size={teacher.vocab_size} != student vocab_size={student.vocab_size} "
            "(model.kd_teacher_restore_from_path vs model.restore_from_path): teacher and student must share "
            "the tokenizer/vocabulary"
        )
    problems = layout_problems(teacher, student.tensor_model_parallel_size, student.pipeline_model_parallel_size,
                               prefix="teacher")
    if problems:
        raise ConfigError(f"{problems[0]}: the teacher is split over the same TP x PP layout as the student")
    if seq_length is not None and seq_length > teacher.max_position_embeddings:
        raise ConfigError(
            f"model.encoder_seq_length={seq_length} exceeds the teacher's max_position_embeddings="
            f"{teacher.max_position_embeddings}"
        )


def check_same_tokenizer(student_path: str | os.PathLike | None, teacher_path: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` when both checkpoints carry a tokenizer and the tokenizer files differ."""
    from nemo_minitron.checkpoint import tokenizer_path

    if not student_path:
        return
    a, b = tokenizer_path(student_path), tokenizer_path(teacher_path)
    if a is None or b is None:
        return
    for name in ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt"):
        fa, fb = a / name, b / name
        if fa.is_file() and fb.is_file() and fa.read_bytes() != fb.read_bytes():
            raise ConfigError(
                f"student ({student_path}) and teacher ({teacher_path}) carry different tokenizers ({name} differs): "
                "knowledge distillation needs a shared vocabulary"
            )


def teacher_config(path: str | os.PathLike, student: ModelConfig) -> ModelConfig:
    """The teacher's architecture from its checkpoint with the student's runtime fields (TP, PP, dtype...)."""
    cfg = load_model_config(path)
    runtime = {k: getattr(student, k) for k in RUNTIME_FIELDS if k != "restore_from_path"}
    return cfg.replace(**runtime, restore_from_path=str(path))


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Put ``model`` in eval mode with every parameter frozen."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teacher(path: str | os.PathLike, student: ModelConfig, seq_length: int | None = None):
    """Build this rank's stage of the teacher, load it from ``path`` and verify every weight. Collective.

    Returns ``(model, cfg)``. The model is frozen (no grads) and in eval mode.
    """
    from nemo_minitron.models.builder import build_gpt_model

    if not path:
        raise ConfigError("model.kd_teacher_restore_from_path is empty: distillation needs a teacher checkpoint")
    cfg = teacher_config(path, student)
    check_teacher_compatible(student, cfg, seq_length)
    model = build_gpt_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    try:
        load_checkpoint(model, cfg, path, strict=True)
    except CheckpointError as exc:
        raise TeacherLoadError(f"teacher {path}: {exc}") from exc
    missing = [n for n, p in model.named_parameters() if torch.isnan(p).any()]
    if missing:
        raise TeacherLoadError(
            f"teacher {path}: {len(missing)} weight(s) were not loaded from the checkpoint: {missing[:10]}"
        )
    freeze(model)
    log.info("teacher %s loaded (%d layers, hidden %d)", path, cfg.num_layers, cfg.hidden_size)
    return model, cfg
