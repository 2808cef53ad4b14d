"""The distillation / finetuning recipe behind ``examples/megatron_distill.py`` and ``examples/megatron_finetune.py``.

:func:`run` reads top to bottom: initialise the parallel layout, read the student's (and the
teacher's) architecture from their checkpoints, build and load both, build the megatron datasets,
train (resuming from the run directory if it holds a checkpoint), export the student as a plain
nemo_minitron checkpoint, and return a summary.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from nemo_minitron.config.model import ConfigError
from nemo_minitron.config.train import TrainConfig, given, student_model_config
from nemo_minitron.logging import get_logger

log = get_logger(__name__)


class MegatronData:
    """Train/valid micro-batches from megatron GPTDatasets (``nemo_minitron.data.gpt_data``) for this DP rank."""

    def __init__(self, cfg: TrainConfig, ctx, tokenizer=None, run_dir: Optional[Path] = None):
        from nemo_minitron.data.gpt_data import build_datasets

        m = cfg.model
        dcfg = cfg.data_config()
        if not given(dcfg.data_prefix):
            raise ConfigError("data.data_prefix (or model.data.data_prefix) is empty: give [PREFIX] or a blend "
                              "[w1, PREFIX1, w2, PREFIX2]")
        if dcfg.index_cache_dir is None and run_dir is not None:
            dcfg = dataclasses.replace(dcfg, index_cache_dir=str(run_dir / "index_cache"))
        dcfg.validate()
        self.ctx, self.mbs, self.num_workers = ctx, m.micro_batch_size, dcfg.num_workers
        n_valid = cfg.trainer.limit_val_batches * m.micro_batch_size * ctx.dp_size if cfg.trainer.val_check_interval \
            else 0
        self.train_ds, self.valid_ds, _ = build_datasets(
            dcfg, {"train": cfg.trainer.max_steps * m.global_batch_size, "valid": n_valid}, tokenizer=tokenizer)

    def train_iterator(self, consumed_samples: int) -> Iterator[dict]:
        """Training micro-batches after ``consumed_samples`` global samples."""
        from nemo_minitron.data.gpt_data import build_dataloader

        return iter(build_dataloader(self.train_ds, self.mbs, self.ctx.dp_rank, self.ctx.dp_size, consumed_samples,
                                     num_workers=self.num_workers))

    def valid_iterator(self) -> Optional[Iterator[dict]]:
        """Validation micro-batches from the start of the validation split."""
        from nemo_minitron.data.gpt_data import build_dataloader

        if self.valid_ds is None:
            return None
        return iter(build_dataloader(self.valid_ds, self.mbs, self.ctx.dp_rank, self.ctx.dp_size, 0))


@dataclass
class RunResult:
    """What :func:`run` did."""

    status: str
    """completed or preempted."""
    step: int
    """Last optimizer step."""
    run_dir: str
    """Run directory (checkpoints, TensorBoard)."""
    export_path: Optional[str]
    """Final student checkpoint, if exported."""
    final_loss: Optional[float]
    """Training loss of the last step run in this process."""
    val: Optional[dict]
    """Last validation result (val_loss, val_ppl)."""


def resolve_run_dir(cfg: TrainConfig, default_base: Optional[str] = None) -> Path:
    """``exp_manager.explicit_log_dir`` or ``<default_base or cwd>/nemo_experiments/<name>`` (NeMo's layout)."""
    if cfg.exp_manager.explicit_log_dir:
        return Path(cfg.exp_manager.explicit_log_dir).absolute()
    return Path(default_base or os.getcwd()).absolute() / "nemo_experiments" / cfg.name


def run(cfg: TrainConfig, run_dir: Optional[str | Path] = None, data=None) -> RunResult:
    """Distil (``mode=distill``) or finetune (``mode=finetune``) the student described by ``cfg``. Collective.

    ``data`` overrides the megatron datasets (any object with ``train_iterator``/``valid_iterator``).
    """
    import torch.distributed as dist

    from nemo_minitron import runtime
    from nemo_minitron.checkpoint import load_checkpoint, load_model_config, tokenizer_path
    from nemo_minitron.distill.objective import build_loss
    from nemo_minitron.distill.teacher import check_same_tokenizer, load_teacher
    from nemo_minitron.interop.convert import resolve_checkpoint
    from nemo_minitron.interop.export import check_export_path, save_result
    from nemo_minitron.models.builder import build_gpt_model
    from nemo_minitron.train.trainer import Trainer

    m = cfg.model
    runtime.init_distributed()
    for key in ("restore_from_path", "kd_teacher_restore_from_path"):  # NeMo 2 / .nemo paths: converted once
        if given(getattr(m, key)) and (key == "restore_from_path" or cfg.mode == "distill"):
            setattr(m, key, str(resolve_checkpoint(getattr(m, key), key=f"model.{key}")))
    cfg.validate(dist.get_world_size())
    if cfg.export.save_path:  # refuse before training, not after it
        check_export_path(cfg.export.save_path, cfg.export.format, overwrite=cfg.export.overwrite,
                          inputs=(m.restore_from_path, m.kd_teacher_restore_from_path))
    ctx = runtime.init_model_parallel(m.tensor_model_parallel_size, m.pipeline_model_parallel_size, seed=m.seed)
    run_dir = Path(run_dir) if run_dir is not None else resolve_run_dir(cfg)
    restore = m.restore_from_path if given(m.restore_from_path) else None
    saved_arch = load_model_config(restore) if restore else None
    student_cfg = student_model_config(m, saved_arch, cfg.trainer.precision)
    if m.encoder_seq_length > student_cfg.max_position_embeddings:
        raise ConfigError(f"model.encoder_seq_length={m.encoder_seq_length} exceeds the student's "
                          f"max_position_embeddings={student_cfg.max_position_embeddings}")
    student = build_gpt_model(student_cfg)
    if restore:
        load_checkpoint(student, student_cfg, restore)
    teacher = teacher_cfg = None
    if cfg.mode == "distill":
        check_same_tokenizer(restore, m.kd_teacher_restore_from_path)
        teacher, teacher_cfg = load_teacher(m.kd_teacher_restore_from_path, student_cfg, m.encoder_seq_length)
    tok_dir = None
    teacher_path = m.kd_teacher_restore_from_path if cfg.mode == "distill" else None
    for src in (restore, teacher_path):
        if src and tokenizer_path(src) is not None:
            tok_dir = str(tokenizer_path(src))
            break
    if data is None:
        data = MegatronData(cfg, ctx, tokenizer=tok_dir, run_dir=run_dir)
    loss = build_loss(cfg, ctx, student, student_cfg, teacher, teacher_cfg)
    trainer = Trainer(cfg, ctx, student, student_cfg, data, run_dir, loss, tokenizer_dir=tok_dir)
    status = trainer.fit()
    export = None
    if status == "completed" and cfg.export.save_path:
        trainer.sync_params()
        export = str(save_result(student, student_cfg, cfg.export.save_path, cfg.export.format,
                                 overwrite=cfg.export.overwrite, tokenizer_dir=tok_dir,
                                 extra_metadata={"trained_by": cfg.mode, "train_steps": trainer.step,
                                                 "teacher": teacher_path}))
    trainer.close()
    return RunResult(status=status, step=trainer.step, run_dir=str(run_dir), export_path=export,
                     final_loss=trainer.history[-1]["loss"] if trainer.history else None,
                     val=trainer.val_history[-1] if trainer.val_history else None)


def run_from_hydra(cfg) -> list[str]:
    """Entry point shared by the distill and finetune launch scripts: run a composed Hydra config.

    Relative run directories resolve against the directory the user launched from (not Hydra's run dir).
    Returns the summary lines for the script to print.
    """
    from hydra.utils import get_original_cwd

    from nemo_minitron.config.store import to_object
    from nemo_minitron.train import signals

    train_cfg = to_object(cfg)
    run_dir = resolve_run_dir(train_cfg, default_base=get_original_cwd())
    try:
        result = run(train_cfg, run_dir)
    except KeyboardInterrupt:  # a second Ctrl-C, or Ctrl-C with exp_manager.save_on_sigterm=false
        log.warning("interrupted: stopped without saving; the run in %s resumes from its last checkpoint", run_dir)
        raise SystemExit(signals.INTERRUPTED_EXIT_CODE) from None
    lines = [f"{train_cfg.mode}: {result.status} at step {result.step}; run dir {result.run_dir}"]
    if result.val:
        lines.append(f"validation loss {result.val['val_loss']:.4f}, perplexity {result.val['val_ppl']:.2f}")
    if result.export_path:
        lines.append(f"student saved to {result.export_path}")
    if result.status == "preempted":
        code = signals.exit_code()
        for line in lines:
            log.warning(line)
        log.warning("stopped early with the checkpoint saved; run the same command to resume (exit code %d)", code)
        raise SystemExit(code)
    return lines
