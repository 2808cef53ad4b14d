"""Schemas of the training entry points: ``examples/megatron_distill.py`` and ``examples/megatron_finetune.py``.

Key names follow NeMo 1's ``megatron_llama_distill.yaml`` so the NeMo pruning + distillation tutorial
commands work unchanged (``model.restore_from_path``, ``model.kd_teacher_restore_from_path``,
``model.data.data_prefix``, ``trainer.max_steps``, ``model.micro_batch_size``, ``model.global_batch_size``,
``model.encoder_seq_length``, ``model.optim.lr``, ``model.optim.sched.min_lr``, ``export.save_path``).
The distillation options NeMo hard-codes live under ``kd.*``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from omegaconf import MISSING

from nemo_minitron.config.checks import positive_int
from nemo_minitron.config.data import DataConfig
from nemo_minitron.config.model import ConfigError, LayoutConfig, ModelConfig, apply_layout, arch_fields
from nemo_minitron.config.schemas import ExportConfig

__all__ = ["ExportConfig", "TrainConfig", "TrainModelConfig", "given", "student_model_config"]


@dataclass
class SchedConfig:
    """Learning-rate schedule: linear warm-up to ``optim.lr``, then cosine decay to ``min_lr``."""

    name: str = "CosineAnnealing"
    """Schedule name; CosineAnnealing (cosine decay) or constant."""

    warmup_steps: int = 0
    """Optimizer steps of linear warm-up from 0 to optim.lr."""

    min_lr: float = 0.0
    """Learning rate reached at the end of the decay (trainer.max_steps unless decay_steps is set)."""

    decay_steps: Optional[int] = None
    """Steps (warm-up included) over which the LR decays; null means trainer.max_steps."""


@dataclass
class OptimConfig:
    """Optimizer (megatron-core ``get_megatron_optimizer``)."""

    name: str = "distributed_fused_adam"
    """distributed_fused_adam (megatron's distributed optimizer: Adam states sharded over data-parallel
    ranks) or fused_adam / adam (plain Adam, states replicated)."""

    lr: float = 1e-4
    """Peak learning rate."""

    weight_decay: float = 0.1
    """Decoupled weight decay (AdamW)."""

    betas: list = field(default_factory=lambda: [0.9, 0.95])
    """Adam (beta1, beta2)."""

    eps: float = 1e-8
    """Adam epsilon."""

    sched: SchedConfig = field(default_factory=SchedConfig)
    """Learning-rate schedule."""

    overlap_grad_sync: Optional[bool] = None
    """Overlap the data-parallel gradient reduction with the backward pass (NeMo key; megatron DDP
    overlap_grad_reduce); null: on with a GPU and the distributed optimizer, off otherwise."""

    overlap_param_sync: Optional[bool] = None
    """Overlap the distributed optimizer's parameter all-gather with the next forward pass (NeMo key;
    megatron DDP overlap_param_gather; needs name=distributed_fused_adam); null: on with a GPU and the
    distributed optimizer, off otherwise."""

    def ddp_overlap(self, on_gpu: bool) -> dict[str, bool]:
        """The megatron ``DistributedDataParallelConfig`` overlap fields for this optimizer, on a GPU or the CPU."""
        distopt = OPTIMIZERS.get(self.name, False)
        grad = (on_gpu and distopt) if self.overlap_grad_sync is None else bool(self.overlap_grad_sync)
        param = (on_gpu and distopt) if self.overlap_param_sync is None else bool(self.overlap_param_sync)
        return {"overlap_grad_reduce": grad, "overlap_param_gather": param}


@dataclass
class TrainDataConfig:
    """NeMo-style data keys under ``model.data``; each one given here overrides the ``data`` group's value."""

    data_prefix: Optional[list] = None
    """Dataset prefixes [p1] or a blend [w1, p1, w2, p2] (overrides data.data_prefix)."""

    splits_string: Optional[str] = None
    """Train/valid/test split of the documents, e.g. "98,1,1" (overrides data.split)."""

    index_mapping_dir: Optional[str] = None
    """Where megatron caches its index files (overrides data.index_cache_dir)."""

    num_workers: Optional[int] = None
    """DataLoader worker processes (overrides data.num_workers)."""


@dataclass
class TrainModelConfig(LayoutConfig):
    """The student checkpoint, its runtime layout and the NeMo-style training keys that live under ``model.``.

    The student's architecture is read from ``restore_from_path`` (as in NeMo); this block has no
    architecture keys, and the parameter dtype is ``trainer.precision``.
    """

    restore_from_path: Optional[str] = MISSING
    """Student checkpoint (e.g. the pruned model); its architecture is the student's."""

    kd_teacher_restore_from_path: Optional[str] = MISSING
    """Teacher checkpoint (nemo_minitron megatron checkpoint). Required for distillation, unused for finetuning."""

    nemo_path: Optional[str] = None
    """NeMo 1 tutorial key: write the trained student as this ``.nemo`` archive (the same as
    ``export.save_path=<path>.nemo``; give one of the two)."""

    micro_batch_size: int = 1
    """Sequences per micro-batch per data-parallel rank."""

    global_batch_size: int = 8
    """Sequences per optimizer step across all data-parallel ranks (gradient accumulation fills the gap)."""

    encoder_seq_length: int = 4096
    """Training sequence length (tokens per sample)."""

    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    """Training data."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and LR schedule."""


@dataclass
class TrainerConfig:
    """Loop length, validation, logging and gradient clipping."""

    max_steps: int = 100
    """Optimizer steps to train for (may be raised when resuming)."""

    val_check_interval: int = 100
    """Run validation every this many steps (and at the end); 0 disables it."""

    limit_val_batches: int = 8
    """Micro-batches per validation run (per data-parallel rank)."""

    log_every_n_steps: int = 10
    """Log scalars (loss parts, LR, grad norm, tokens/s) every this many steps."""

    gradient_clip_val: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""

    precision: str = "auto"
    """Parameter dtype of student and teacher: auto (bf16 on GPU, fp32 on CPU), fp32 or bf16."""

    num_nodes: int = 1
    """Informational (the launcher decides the world size)."""

    devices: int = 1
    """Informational (the launcher decides the world size)."""


@dataclass
class KDConfig:
    """Knowledge-distillation loss (Minitron defaults: logits only, forward KL, T = 1, no LM loss)."""

    loss: str = "minitron"
    """Loss object (registry in nemo_minitron.distill.objective): minitron (logit KL + balanced
    intermediate pairs, optional LM-loss mixing), logits_kl (logit KL only), lm (LM loss only), or
    package.module:ClassName for a TrainingLoss subclass of your own."""

    temperature: float = 1.0
    """Softmax temperature of teacher and student logits."""

    scale_by_t2: bool = False
    """Multiply the logit KL by temperature**2 (keeps gradient scale constant across temperatures)."""

    reverse_kl: bool = False
    """Use KL(student || teacher) instead of the forward KL(teacher || student)."""

    top_k: Optional[int] = None
    """If set, KL over the teacher's top-k tokens only (renormalised); null means the full vocabulary."""

    skip_lm_loss: bool = True
    """Train on the KD loss only; false mixes in the student's LM loss (see kd_loss_scale)."""

    kd_loss_scale: float = 1.0
    """With skip_lm_loss=false: the KD term is rescaled to kd_loss_scale x the LM loss magnitude."""

    intermediate_pairs: list = field(default_factory=list)
    """[[student_module, teacher_module], ...] hidden-state pairs, e.g.
    [[decoder.final_layernorm, decoder.final_layernorm]]; modules must be on the last pipeline stage."""

    intermediate_loss: str = "cosine"
    """Per-token hidden-state loss: cosine or mse. A learned linear map projects student states to
    the teacher width when they differ."""


@dataclass
class ExpManagerConfig:
    """Run directory, checkpoints, resume and TensorBoard."""

    explicit_log_dir: Optional[str] = None
    """Run output directory; null means the Hydra run directory."""

    resume_if_exists: bool = True
    """Resume from the latest train-state checkpoint in the run directory if there is one."""

    checkpoint_every_n_steps: int = 100
    """Save a train-state checkpoint every this many steps (and always at the end); 0 means only at the end."""

    keep_last_k: int = 2
    """Train-state checkpoints to keep (older ones are deleted after a successful save)."""

    create_tensorboard_logger: bool = True
    """Write TensorBoard scalars under RUN/tensorboard."""

    save_on_sigterm: bool = True
    """On SIGTERM/SIGUSR1 (SLURM preemption): finish the step, save a checkpoint and exit cleanly."""


@dataclass
class TrainConfig:
    """``examples/megatron_distill.py`` / ``examples/megatron_finetune.py``: KD or LM-loss training."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "model.precision": "the parameter dtype of training is trainer.precision (the NeMo key)",
        **{f"model.{k}": "the student's architecture is read from its checkpoint (model.restore_from_path)"
           for k in arch_fields()},
    }

    name: str = "megatron_distill"
    """Run name (TensorBoard / logs)."""

    mode: str = "distill"
    """distill (KD from model.kd_teacher_restore_from_path) or finetune (LM loss only, e.g. teacher correction)."""

    model: TrainModelConfig = field(default_factory=TrainModelConfig)
    """Student model, data and optimizer."""

    data: DataConfig = field(default_factory=DataConfig)
    """Training data (the ``data`` group: conf/data/*.yaml); ``model.data.*`` keys override it and
    ``model.encoder_seq_length`` sets its sequence length."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Loop settings."""

    kd: KDConfig = field(default_factory=KDConfig)
    """Distillation loss settings (ignored when mode=finetune)."""

    exp_manager: ExpManagerConfig = field(default_factory=ExpManagerConfig)
    """Output directory, checkpoints and resume."""

    export: ExportConfig = field(default_factory=ExportConfig)
    """Final student export (export.format; null save_path skips it)."""

    def validate(self, world_size: int = 1) -> "TrainConfig":
        """Check cross-field rules before anything is built; raise :class:`ConfigError` naming the key."""
        m, t = self.model, self.trainer
        if self.mode not in ("distill", "finetune"):
            raise ConfigError(f"mode={self.mode!r} must be distill or finetune")
        if not given(m.restore_from_path):
            raise ConfigError("model.restore_from_path is required: the student checkpoint (its architecture is used)")
        if self.mode == "distill" and not given(m.kd_teacher_restore_from_path):
            raise ConfigError("mode=distill needs model.kd_teacher_restore_from_path (the teacher checkpoint)")
        if given(m.nemo_path):  # the NeMo 1 spelling of the export path
            if self.export.save_path and self.export.save_path != m.nemo_path:
                raise ConfigError(f"model.nemo_path={m.nemo_path} and export.save_path={self.export.save_path} "
                                  "both name the output; give one of them")
            self.export.save_path = m.nemo_path
        for key, value in (("trainer.max_steps", t.max_steps), ("model.micro_batch_size", m.micro_batch_size),
                           ("model.global_batch_size", m.global_batch_size),
                           ("model.encoder_seq_length", m.encoder_seq_length)):
            positive_int(key, value)
        mp = m.tensor_model_parallel_size * m.pipeline_model_parallel_size
        if world_size % mp:
            raise ConfigError(
                f"world size {world_size} is not divisible by model.tensor_model_parallel_size="
                f"{m.tensor_model_parallel_size} x model.pipeline_model_parallel_size={m.pipeline_model_parallel_size}"
            )
        dp = world_size // mp
        if m.global_batch_size % (m.micro_batch_size * dp):
            raise ConfigError(
                f"model.global_batch_size={m.global_batch_size} is not divisible by model.micro_batch_size="
                f"{m.micro_batch_size} x data-parallel size {dp}"
            )
        if m.optim.name not in OPTIMIZERS:
            raise ConfigError(f"model.optim.name={m.optim.name!r} must be one of {sorted(OPTIMIZERS)}")
        if m.optim.overlap_param_sync and not OPTIMIZERS[m.optim.name]:
            raise ConfigError(f"model.optim.overlap_param_sync=true needs the distributed optimizer "
                              f"(model.optim.name=distributed_fused_adam, not {m.optim.name}); set it to false or null")
        if m.optim.sched.name not in ("CosineAnnealing", "constant"):
            raise ConfigError(f"model.optim.sched.name={m.optim.sched.name!r} must be CosineAnnealing or constant")
        if m.optim.sched.warmup_steps < 0:
            raise ConfigError(f"model.optim.sched.warmup_steps={m.optim.sched.warmup_steps} must be >= 0")
        if m.optim.sched.min_lr > m.optim.lr:
            raise ConfigError(f"model.optim.sched.min_lr={m.optim.sched.min_lr} exceeds model.optim.lr={m.optim.lr}")
        if len(m.optim.betas) != 2:
            raise ConfigError(f"model.optim.betas={list(m.optim.betas)} must have two values")
        if self.mode == "distill":
            from nemo_minitron.distill.objective import resolve_loss

            resolve_loss(self.kd.loss)  # ConfigError naming kd.loss when unknown
        if self.kd.temperature <= 0:
            raise ConfigError(f"kd.temperature={self.kd.temperature} must be > 0")
        if self.kd.top_k is not None and self.kd.top_k < 1:
            raise ConfigError(f"kd.top_k={self.kd.top_k} must be >= 1 or null")
        from nemo_minitron.distill.losses import HIDDEN_STATE_LOSSES

        if self.kd.intermediate_loss not in HIDDEN_STATE_LOSSES:
            raise ConfigError(f"kd.intermediate_loss={self.kd.intermediate_loss!r} must be one of "
                              f"{list(HIDDEN_STATE_LOSSES)}")
        for i, pair in enumerate(self.kd.intermediate_pairs):
            if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
                raise ConfigError(f"kd.intermediate_pairs[{i}]={pair!r} must be [student_module, teacher_module]")
        if self.exp_manager.keep_last_k < 1:
            raise ConfigError(f"exp_manager.keep_last_k={self.exp_manager.keep_last_k} must be >= 1")
        if t.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"trainer.precision={t.precision!r} must be auto, fp32 or bf16")
        return self

    def data_config(self) -> DataConfig:
        """The effective data config: the ``data`` group, ``model.data.*`` overrides, the model's sequence length."""
        d, nemo = self.data, self.model.data
        changes: dict[str, Any] = {"seq_length": self.model.encoder_seq_length}
        if nemo.data_prefix:
            changes["data_prefix"] = list(nemo.data_prefix)
        if nemo.splits_string is not None:
            changes["split"] = nemo.splits_string
        if nemo.index_mapping_dir is not None:
            changes["index_cache_dir"] = nemo.index_mapping_dir
        if nemo.num_workers is not None:
            changes["num_workers"] = nemo.num_workers
        return dataclasses.replace(d, **changes)

    def num_microbatches(self, dp_size: int) -> int:
        """Micro-batches per optimizer step on each data-parallel rank."""
        return self.model.global_batch_size // (self.model.micro_batch_size * dp_size)


def given(value: Any) -> bool:
    """True for a value that was set (not None, empty or Hydra's ``???``)."""
    return value not in (None, "", MISSING) and not (isinstance(value, (list, tuple)) and not value)


OPTIMIZERS = {"distributed_fused_adam": True, "fused_adam": False, "adam": False}
"""Optimizer name -> whether megatron's distributed optimizer is used."""


def student_model_config(model: TrainModelConfig, arch_from: Optional[ModelConfig] = None,
                         precision: str = "auto") -> ModelConfig:
    """The student's :class:`ModelConfig`: architecture ``arch_from`` (read from its checkpoint), layout from ``model``."""
    if arch_from is None:
        raise ConfigError("model.restore_from_path is required: the student's architecture is read from its checkpoint")
    restore = model.restore_from_path if given(model.restore_from_path) else None
    return apply_layout(model, arch_from).replace(restore_from_path=restore, precision=precision).validate()


def register(cs) -> None:
    """Register the training schemas."""
    cs.store(name="megatron_train_schema", node=TrainConfig)
