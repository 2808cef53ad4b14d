"""Training loop for a megatron-core GPT student (Minitron §3, arXiv 2407.14679; 2408.11796).

The loop knows one model chunk and one loss object (:mod:`nemo_minitron.distill.objective`): the
chunk returns ``(student_logits, teacher_logits)`` on the last pipeline stage and the loss object,
chosen by ``kd.loss`` (or the LM loss for ``mode=finetune``), turns them into the loss to train on.
Parameters the loss owns are trained with the student (:class:`~nemo_minitron.train.chunk.TrainedChunk`).

It uses megatron-core end to end: ``DistributedDataParallel``, ``get_megatron_optimizer`` (the
distributed optimizer or plain Adam), the no-pipelining / 1F1B schedules with gradient
accumulation over micro-batches, ``finalize_model_grads`` and megatron's gradient clipping. The LR
follows linear warm-up + cosine decay (:mod:`nemo_minitron.train.lr`). Scalars go to the log and to
TensorBoard; a tqdm bar shows progress on rank 0. Train-state checkpoints
(:mod:`nemo_minitron.train.checkpointing`) are written every N steps, at the end and on SIGTERM.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

import torch
import torch.distributed as dist

from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.config.train import OPTIMIZERS, TrainConfig
from nemo_minitron.distill.objective import TrainingLoss
from nemo_minitron.distill.stage import DistillationStage
from nemo_minitron.logging import get_logger
from nemo_minitron.models.forward import lm_loss_sums
from nemo_minitron.runtime import ParallelContext
from nemo_minitron.train import checkpointing, signals
from nemo_minitron.train.chunk import TrainedChunk
from nemo_minitron.train.lr import lr_at

log = get_logger(__name__)

class DataProvider(Protocol):
    """Micro-batches for this data-parallel rank: dicts with tokens, labels, loss_mask, position_ids."""

    def train_iterator(self, consumed_samples: int) -> Iterator[dict]:
        """Training micro-batches starting after ``consumed_samples`` global samples."""

    def valid_iterator(self) -> Optional[Iterator[dict]]:
        """Validation micro-batches from the start (None if there is no validation data)."""


def _make(cls, **kwargs):
    """Instantiate a megatron config dataclass with only the fields the installed version has."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in kwargs.items() if k in names})


def apply_group_schedule(param_groups, lr: float, weight_decay: float) -> None:
    """Set each megatron parameter group's LR and weight decay from its ``lr_mult`` / ``wd_mult``.

    megatron-core marks norm weights and biases (1-D parameters) with ``wd_mult=0``; only its own
    ``OptimizerParamScheduler`` applies the multipliers, so a loop that sets ``lr`` alone would decay
    every parameter. NeMo renames the keys ``pre_lr_mult`` / ``pre_wd_mult``; both spellings are read.
    """
    for group in param_groups:
        lr_mult = group.get("lr_mult", group.get("pre_lr_mult", 1.0))
        wd_mult = group.get("wd_mult", group.get("pre_wd_mult", 1.0))
        group["lr"] = lr * lr_mult
        group["weight_decay"] = weight_decay * wd_mult


class Trainer:
    """Train ``student`` (this rank's stage) and the parameters of ``loss`` on ``loss``.

    ``loss`` comes from :func:`nemo_minitron.distill.objective.build_loss`; the teacher it names
    (:attr:`~nemo_minitron.distill.objective.TrainingLoss.teacher`) runs next to the student.
    """

    def __init__(self, cfg: TrainConfig, ctx: ParallelContext, student: torch.nn.Module, student_cfg: ModelConfig,
                 data: DataProvider, run_dir: str | Path, loss: TrainingLoss, tokenizer_dir: Optional[str] = None):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        self.cfg, self.ctx, self.data = cfg, ctx, data
        self.student, self.student_cfg, self.loss = student, student_cfg, loss
        self.run_dir = Path(run_dir)
        self.tokenizer_dir = tokenizer_dir
        m = cfg.model
        self.mbs, self.seq = m.micro_batch_size, m.encoder_seq_length
        self.num_micro = cfg.num_microbatches(ctx.dp_size)
        self.use_distopt = OPTIMIZERS[m.optim.name]
        tconf = student.config
        overlap = m.optim.ddp_overlap(ctx.on_gpu)  # model.optim.overlap_grad_sync / overlap_param_sync
        self.overlap_param_gather = overlap["overlap_param_gather"]
        self.ddp = DistributedDataParallel(
            config=tconf,
            ddp_config=_make(DistributedDataParallelConfig, grad_reduce_in_fp32=True, **overlap,
                             use_distributed_optimizer=self.use_distopt, check_for_nan_in_grad=True),
            module=TrainedChunk(student, loss),
        )
        self.optimizer = get_megatron_optimizer(
            _make(OptimizerConfig, optimizer="adam", lr=m.optim.lr, min_lr=m.optim.sched.min_lr,
                  weight_decay=m.optim.weight_decay, adam_beta1=float(m.optim.betas[0]),
                  adam_beta2=float(m.optim.betas[1]), adam_eps=m.optim.eps,
                  clip_grad=float(cfg.trainer.gradient_clip_val), bf16=tconf.bf16, fp16=tconf.fp16,
                  params_dtype=tconf.params_dtype, use_distributed_optimizer=self.use_distopt,
                  overlap_param_gather=self.overlap_param_gather),
            [self.ddp],
        )
        self.stage = DistillationStage(self.ddp, loss.teacher, is_last_stage=ctx.is_last_stage, pp_size=ctx.pp_size)
        self.report_keys = tuple(loss.report_keys)
        tconf.no_sync_func = self.ddp.no_sync
        tconf.grad_scale_func = self.optimizer.scale_loss
        tconf.finalize_model_grads_func = self._finalize_grads
        self.step = 0
        self.consumed_samples = 0
        self.writer = None
        self.history: list[dict] = []
        self.val_history: list[dict] = []

    # ------------------------------------------------------------------ megatron plumbing
    def sync_params(self) -> None:
        """Bring every rank's weights up to date after an optimizer step. Collective.

        With ``model.optim.overlap_param_sync`` the distributed optimizer's parameter all-gather runs
        during the next forward pass, so between steps each rank holds current values only for its own
        shard; saving and evaluating call this first. A no-op without the overlap.
        """
        if self.overlap_param_gather:
            self.ddp.start_param_sync(force_sync=True)

    def _finalize_grads(self, model_chunks, *args, **kwargs):
        from megatron.core.distributed import finalize_model_grads

        finalize_model_grads([self.ddp], *args, **kwargs)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.ctx.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _loss_func(self, batch: dict, output):
        student_logits, teacher_logits = output
        loss, report = self.loss(student_logits, teacher_logits, batch)
        # detached copies: the schedule divides the returned loss tensor in place by the micro-batch count
        return loss, {k: report[k].detach().clone() for k in self.report_keys}

    def _forward_step(self, data_iter: Iterator[dict], stage: DistillationStage):
        batch = self._to_device(next(data_iter))
        return stage(batch["tokens"], batch["position_ids"]), partial(self._loss_func, batch)

    def _reduce_scalars(self, reports: list[dict], keys) -> dict:
        """Average over micro-batches (last stage) and DP ranks; the result is on every rank (one host sync)."""
        device = torch.device("cuda") if self.ctx.on_gpu else torch.device("cpu")
        vec = torch.zeros(len(keys), dtype=torch.float64, device=device)
        if self.ctx.is_last_stage and reports:
            vec = torch.stack([torch.stack([torch.as_tensor(r[k]).to(device, torch.float64).reshape(())
                                            for r in reports]).mean() for k in keys])
        if self.ctx.pp_size > 1:
            dist.all_reduce(vec, group=self.ctx.pp_group)  # only the last stage contributes
        if self.ctx.dp_size > 1:
            dist.all_reduce(vec, group=self.ctx.dp_group)
            vec /= self.ctx.dp_size
        return dict(zip(keys, vec.cpu().tolist()))

    def _lr(self, step: int) -> float:
        s = self.cfg.model.optim.sched
        decay = s.decay_steps or self.cfg.trainer.max_steps
        return lr_at(step, self.cfg.model.optim.lr, s.min_lr, s.warmup_steps, decay, s.name)

    # ------------------------------------------------------------------ one step
    def train_step(self, micro_batches: list[dict]) -> dict:
        """Forward/backward over ``micro_batches`` (one optimizer step); returns reduced scalars."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        self.stage.train()
        self.loss.train()
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        kwargs = self.stage.schedule_kwargs()
        reports = get_forward_backward_func()(
            forward_step_func=self._forward_step, data_iterator=iter(micro_batches), model=[self.stage],
            num_microbatches=len(micro_batches), seq_length=self.seq, micro_batch_size=self.mbs,
            forward_only=False, **kwargs,
        )
        lr = self._lr(self.step)
        apply_group_schedule(self.optimizer.param_groups, lr, self.cfg.model.optim.weight_decay)
        ok, grad_norm, _ = self.optimizer.step()
        scalars = self._reduce_scalars(reports, self.report_keys)
        scalars.update(lr=lr, grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                       update_ok=float(bool(ok)))
        return scalars

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> Optional[dict]:
        """Student LM loss and perplexity on ``trainer.limit_val_batches`` validation micro-batches."""
        it = self.data.valid_iterator()
        if it is None or self.cfg.trainer.limit_val_batches < 1:
            return None
        batches = list(itertools.islice(it, self.cfg.trainer.limit_val_batches))
        if not batches:
            return None
        self.sync_params()
        # the student alone (validation needs no teacher), through the one forward engine
        sums = lm_loss_sums(self.ddp, batches, dp_group=self.ctx.dp_group if self.ctx.dp_size > 1 else None)
        return {"val_loss": sums.loss, "val_ppl": sums.ppl}

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self) -> dict:
        c = self.ctx
        return {"consumed_samples": self.consumed_samples, "mode": self.cfg.mode,
                "config": checkpointing.run_identity(self.cfg),
                "layout": {"tp": c.tp_size, "pp": c.pp_size, "dp": c.dp_size},
                "optimizer": self.cfg.model.optim.name, "max_steps": self.cfg.trainer.max_steps}

    def save(self) -> Path:
        """Write a train-state checkpoint for the current step. Collective."""
        self.sync_params()
        return checkpointing.save_train_state(
            self.run_dir, self.step, self.ddp, self.student_cfg, self.optimizer, self._trainer_state(),
            keep_last_k=self.cfg.exp_manager.keep_last_k, tokenizer_dir=self.tokenizer_dir)

    def maybe_resume(self) -> bool:
        """Resume from the run directory's latest checkpoint if ``exp_manager.resume_if_exists``."""
        if not self.cfg.exp_manager.resume_if_exists:
            return False
        path = checkpointing.latest_checkpoint(self.run_dir)
        if path is None:
            return False
        saved_state = checkpointing.read_trainer_state(path)
        checkpointing.check_same_run(saved_state.get("config"), checkpointing.run_identity(self.cfg), path)
        saved = saved_state.get("layout", {})
        now = {"tp": self.ctx.tp_size, "pp": self.ctx.pp_size, "dp": self.ctx.dp_size}
        if self.use_distopt and saved and (saved["tp"], saved["pp"]) != (now["tp"], now["pp"]):
            raise ConfigError(
                f"{path} was saved at TP={saved['tp']} PP={saved['pp']} with the distributed optimizer, whose state "
                f"reshards over data-parallel ranks only; resume with model.tensor_model_parallel_size={saved['tp']} "
                f"model.pipeline_model_parallel_size={saved['pp']}, or load {path}/model as model.restore_from_path "
                "in a new run directory")
        if saved and saved != now:
            log.info("resuming a checkpoint saved at %s with layout %s", saved, now)
        state, _ = checkpointing.load_train_state(path, self.ddp, self.student_cfg, self.optimizer)
        self.step = int(state["step"])
        self.consumed_samples = int(state["consumed_samples"])
        return True

    # ------------------------------------------------------------------ the loop
    def _log(self, scalars: dict, step: int) -> None:
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(f"train/{k}" if not k.startswith("val_") else f"val/{k[4:]}", v, step)

    def fit(self, on_step: Optional[Callable[[int, dict], None]] = None) -> str:
        """Train until ``trainer.max_steps``; returns ``"completed"`` or ``"preempted"``. Collective.

        ``on_step(step, scalars)`` is called on every rank after each step (tests use it to inject
        a pre-emption).
        """
        t = self.cfg.trainer
        em = self.cfg.exp_manager
        gbs = self.cfg.model.global_batch_size
        if self.ctx.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if em.create_tensorboard_logger:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        signals.reset()
        if em.save_on_sigterm:
            signals.install()
        self.maybe_resume()
        if self.step >= t.max_steps:
            log.info("already at step %d >= trainer.max_steps=%d: nothing to train", self.step, t.max_steps)
        it = self.data.train_iterator(self.consumed_samples)
        bar = None
        if self.ctx.rank == 0 and self.step < t.max_steps:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.max_steps, initial=self.step, desc=self.cfg.mode, dynamic_ncols=True)
        status, last_saved = "completed", -1
        tokens_per_step = gbs * self.seq
        try:
            while self.step < t.max_steps:
                t0 = time.perf_counter()
                micro = [next(it) for _ in range(self.num_micro)]
                scalars = self.train_step(micro)
                dt = time.perf_counter() - t0
                self.step += 1
                self.consumed_samples += gbs
                scalars.update(step_time=dt, tokens_per_s=tokens_per_step / dt)
                self.history.append({"step": self.step, **scalars})
                if len(self.history) > 10_000:  # bounded: week-long runs must not grow memory
                    del self.history[:-10_000]
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars['lr']:.2e}")
                if self.step % max(1, t.log_every_n_steps) == 0 or self.step == t.max_steps:
                    self._log(scalars, self.step)
                    parts = " ".join(f"{k} {scalars[k]:.4f}" for k in self.report_keys[1:])
                    log.info("step %d/%d loss %.4f (%s) lr %.3e grad_norm %.3f %.0f tokens/s", self.step, t.max_steps,
                             scalars["loss"], parts, scalars["lr"], scalars["grad_norm"], scalars["tokens_per_s"])
                if t.val_check_interval and (self.step % t.val_check_interval == 0 or self.step == t.max_steps):
                    val = self.validate()
                    if val is not None:
                        self.val_history.append({"step": self.step, **val})
                        self._log(val, self.step)
                        log.info("step %d validation: loss %.4f ppl %.2f", self.step, val["val_loss"], val["val_ppl"])
                if on_step is not None:
                    on_step(self.step, scalars)
                preempt = em.save_on_sigterm and signals.stop_requested()
                every = em.checkpoint_every_n_steps
                if preempt or (every and self.step % every == 0) or self.step == t.max_steps:
                    self.save()
                    last_saved = self.step
                if preempt:
                    log.warning("stopping at step %d after a stop signal (checkpoint saved)", self.step)
                    status = "preempted"
                    break
            if status == "completed" and last_saved != self.step and self.step > 0:
                if checkpointing.latest_checkpoint(self.run_dir) is None:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            if self.writer is not None:
                self.writer.flush()
            if em.save_on_sigterm:
                signals.uninstall()
        return status

    def close(self) -> None:
        """Release the TensorBoard writer and the loss object's hooks."""
        self.loss.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
