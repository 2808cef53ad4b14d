"""Helpers shared by the distillation/training tests and workers: synthetic data, tiny checkpoints, configs."""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from nemo_minitron.config.model import ModelConfig
from nemo_minitron.config.train import TrainConfig
from tests.tiny import tiny  # noqa: F401  (the distill workers and tests import it from here)


class SyntheticData:
    """Deterministic token windows: sample ``i`` depends only on ``i`` (so resume replays exactly).

    Sequences follow a noisy affine rule (x[t+1] = (a*x[t] + b) % V mostly), so a model can learn them.
    Batches are dealt in megatron's pre-training order: global batch of ``mbs*dp`` consecutive samples,
    DP rank r takes the r-th micro-batch.
    """

    def __init__(self, vocab: int, seq: int, mbs: int, dp_rank: int = 0, dp_size: int = 1, valid_samples: int = 4):
        self.vocab, self.seq, self.mbs, self.dp_rank, self.dp_size = vocab, seq, mbs, dp_rank, dp_size
        self.valid_samples = valid_samples

    def sample(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 + i)
        x = torch.empty(self.seq + 1, dtype=torch.long)
        x[0] = torch.randint(0, self.vocab, (1,), generator=g)
        noise = torch.rand(self.seq, generator=g) < 0.1
        rnd = torch.randint(0, self.vocab, (self.seq,), generator=g)
        for t in range(self.seq):
            x[t + 1] = rnd[t] if noise[t] else (5 * x[t] + 3) % self.vocab
        return x

    def _batch(self, ids: list[int]) -> dict:
        xs = torch.stack([self.sample(i) for i in ids])
        return {"tokens": xs[:, :-1].contiguous(), "labels": xs[:, 1:].contiguous(),
                "loss_mask": torch.ones(len(ids), self.seq), "position_ids":
                torch.arange(self.seq).unsqueeze(0).expand(len(ids), -1).contiguous()}

    def train_iterator(self, consumed_samples: int) -> Iterator[dict]:
        start = consumed_samples
        gb = self.mbs * self.dp_size
        while True:
            ids = list(range(start + self.dp_rank * self.mbs, start + (self.dp_rank + 1) * self.mbs))
            yield self._batch(ids)
            start += gb

    def valid_iterator(self) -> Optional[Iterator[dict]]:
        base = 10_000_000
        for k in range(0, self.valid_samples, self.mbs * self.dp_size):
            lo = base + k + self.dp_rank * self.mbs
            yield self._batch(list(range(lo, lo + self.mbs)))


def make_checkpoint(cfg: ModelConfig, path, seed: int, output_scale: float = 1.0) -> None:
    """Build ``cfg`` at the current model-parallel layout with seed ``seed`` and save it. Collective.

    ``output_scale`` multiplies the output layer so a random teacher has peaked, informative distributions.
    """
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.models.builder import build_gpt_model
    from nemo_minitron.runtime import seed_everything

    seed_everything(seed)
    model = build_gpt_model(cfg)
    if output_scale != 1.0:
        with torch.no_grad():
            model.output_layer.weight.mul_(output_scale)
    save_checkpoint(model, cfg, path, overwrite=True)


def train_cfg(mode: str = "distill", teacher: Optional[str] = None, max_steps: int = 4, mbs: int = 2, gbs: int = 4,
              seq: int = 32, optim: str = "distributed_fused_adam", **kd) -> TrainConfig:
    cfg = TrainConfig(mode=mode)
    cfg.model.kd_teacher_restore_from_path = teacher
    cfg.model.restore_from_path = None
    cfg.model.micro_batch_size, cfg.model.global_batch_size, cfg.model.encoder_seq_length = mbs, gbs, seq
    cfg.model.optim.name = optim
    cfg.model.optim.lr = 3e-3
    cfg.model.optim.sched.warmup_steps = 1
    cfg.model.optim.sched.min_lr = 3e-4
    cfg.trainer.max_steps = max_steps
    cfg.trainer.val_check_interval = 0
    cfg.trainer.log_every_n_steps = 1
    cfg.exp_manager.checkpoint_every_n_steps = 0
    cfg.exp_manager.create_tensorboard_logger = False
    for k, v in kd.items():
        setattr(cfg.kd, k, v)
    return cfg


def build_trainer(cfg: TrainConfig, ctx, student_cfg: ModelConfig, run_dir, student_ckpt=None, seed: int = 11):
    """Student (from ``student_ckpt`` or fresh with ``seed``) + teacher + synthetic data -> Trainer."""
    from nemo_minitron.checkpoint import load_checkpoint
    from nemo_minitron.distill.objective import build_loss
    from nemo_minitron.distill.teacher import load_teacher
    from nemo_minitron.models.builder import build_gpt_model
    from nemo_minitron.runtime import seed_everything
    from nemo_minitron.train.trainer import Trainer

    seed_everything(seed)
    student = build_gpt_model(student_cfg)
    if student_ckpt is not None:
        load_checkpoint(student, student_cfg, student_ckpt)
    teacher = tcfg = None
    if cfg.mode == "distill":
        teacher, tcfg = load_teacher(cfg.model.kd_teacher_restore_from_path, student_cfg, cfg.model.encoder_seq_length)
    data = SyntheticData(student_cfg.vocab_size, cfg.model.encoder_seq_length, cfg.model.micro_batch_size,
                         ctx.dp_rank, ctx.dp_size)
    return Trainer(cfg, ctx, student, student_cfg, data, run_dir, build_loss(cfg, ctx, student, student_cfg, teacher, tcfg))
