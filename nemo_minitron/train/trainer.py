"""Distillation and LM-loss training of a megatron-core GPT student (Minitron §3, arXiv 2407.14679; 2408.11796).

One loop serves both modes of :class:`~nemo_minitron.config.train.TrainConfig`:

* ``distill``: logit KL against a frozen teacher (optionally intermediate-state losses and LM-loss
  mixing, see :mod:`nemo_minitron.distill.losses`);
* ``finetune``: LM loss only (teacher correction, or the LM-loss baseline of the demo).

It uses megatron-core end to end: ``DistributedDataParallel``, ``get_megatron_optimizer`` (the
distributed optimizer or plain Adam), the no-pipelining / 1F1B schedules with gradient
accumulation over micro-batches, ``finalize_model_grads`` and megatron's gradient clipping. The LR
follows linear warm-up + cosine decay (:mod:`nemo_minitron.train.lr`). Scalars go to the log and to
TensorBoard; a tqdm bar shows progress on rank 0. Train-state checkpoints
(:mod:`nemo_minitron.train.checkpointing`) are written every N steps, at the end and on SIGTERM.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

import torch
import torch.distributed as dist

from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.config.train import OPTIMIZERS, TrainConfig
from nemo_minitron.distill import losses
from nemo_minitron.distill.stage import DistillationStage, adjust_tensor_shapes
from nemo_minitron.logging import get_logger
from nemo_minitron.models.forward import perplexity
from nemo_minitron.runtime import ParallelContext
from nemo_minitron.train import checkpointing, signals
from nemo_minitron.train.lr import lr_at

log = get_logger(__name__)

#: Scalars reduced from the last pipeline stage, in this order.
LOSS_KEYS = ("loss", "kd_loss", "logits_loss", "intermediate_loss", "lm_loss")


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


class Trainer:
    """Train ``student`` (this rank's stage) with KD from ``teacher`` or with the LM loss alone."""

    def __init__(self, cfg: TrainConfig, ctx: ParallelContext, student: torch.nn.Module, student_cfg: ModelConfig,
                 data: DataProvider, run_dir: str | Path, teacher: Optional[torch.nn.Module] = None,
                 teacher_cfg: Optional[ModelConfig] = None, tokenizer_dir: Optional[str] = None):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        self.cfg, self.ctx, self.data = cfg, ctx, data
        self.student_cfg, self.teacher_cfg = student_cfg, teacher_cfg
        self.run_dir = Path(run_dir)
        self.tokenizer_dir = tokenizer_dir
        self.distill = cfg.mode == "distill"
        if self.distill and teacher is None:
            raise ValueError("mode=distill needs a teacher model")
        m = cfg.model
        self.mbs, self.seq = m.micro_batch_size, m.encoder_seq_length
        self.num_micro = cfg.num_microbatches(ctx.dp_size)
        self.use_distopt = OPTIMIZERS[m.optim.name]
        tconf = student.config
        self.ddp = DistributedDataParallel(
            config=tconf,
            ddp_config=_make(DistributedDataParallelConfig, grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                             use_distributed_optimizer=self.use_distopt, check_for_nan_in_grad=True),
            module=student,
        )
        self.optimizer = get_megatron_optimizer(
            _make(OptimizerConfig, optimizer="adam", lr=m.optim.lr, min_lr=m.optim.sched.min_lr,
                  weight_decay=m.optim.weight_decay, adam_beta1=float(m.optim.betas[0]),
                  adam_beta2=float(m.optim.betas[1]), adam_eps=m.optim.eps,
                  clip_grad=float(cfg.trainer.gradient_clip_val), bf16=tconf.bf16, fp16=tconf.fp16,
                  params_dtype=tconf.params_dtype, use_distributed_optimizer=self.use_distopt),
            [self.ddp],
        )
        self.stage = DistillationStage(
            self.ddp, teacher if self.distill else None, student_cfg.hidden_size,
            teacher_cfg.hidden_size if (self.distill and teacher_cfg) else 0,
            intermediate_pairs=cfg.kd.intermediate_pairs if self.distill else None,
            is_last_stage=ctx.is_last_stage, seed=student_cfg.seed,
        )
        self.proj_opt = None
        if self.stage.projection is not None:
            self.stage.projection.to(ctx.device)
            self.proj_opt = torch.optim.AdamW(self.stage.projection.parameters(), lr=m.optim.lr,
                                              betas=tuple(m.optim.betas), eps=m.optim.eps,
                                              weight_decay=m.optim.weight_decay)
        tconf.no_sync_func = self.ddp.no_sync
        tconf.grad_scale_func = self.optimizer.scale_loss
        tconf.finalize_model_grads_func = self._finalize_grads
        self.step = 0
        self.consumed_samples = 0
        self.writer = None
        self.history: list[dict] = []
        self.val_history: list[dict] = []

    # ------------------------------------------------------------------ megatron plumbing
    def _finalize_grads(self, model_chunks, *args, **kwargs):
        from megatron.core.distributed import finalize_model_grads

        finalize_model_grads([self.ddp], *args, **kwargs)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.ctx.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _loss_func(self, batch: dict, teacher_logits: Optional[torch.Tensor], inter: list, output: torch.Tensor):
        from megatron.core import tensor_parallel

        mask = batch["loss_mask"].float()
        kd_parts = None
        if self.distill:
            kd = self.cfg.kd
            kl_tok = losses.vocab_parallel_logit_kl(output, teacher_logits, self.ctx.tp_group, kd.temperature,
                                                    kd.reverse_kl, kd.scale_by_t2, kd.top_k)
            inter_loss = None
            if inter:
                per_pair = [losses.masked_mean(losses.hidden_state_loss(s, t, kd.intermediate_loss)
                                               .transpose(0, 1), mask) for s, t in inter]
                inter_loss = torch.stack(per_pair).mean()
            kd_parts = (losses.masked_mean(kl_tok, mask), inter_loss)
        # megatron's vocab_parallel_cross_entropy overwrites its input in place (logits -> exp(logits - max)),
        # so it runs after everything else that reads the logits. With skip_lm_loss the LM loss is only
        # reported: no autograd graph.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not (self.distill and self.cfg.kd.skip_lm_loss)):
            lm_tok = tensor_parallel.vocab_parallel_cross_entropy(output.float(), batch["labels"])
            lm = losses.masked_mean(lm_tok, mask)
        if kd_parts is None:
            out = {"loss": lm, "lm_loss": lm}
        else:
            out = losses.balance_losses(lm, kd_parts[0], kd_parts[1], self.cfg.kd.skip_lm_loss, self.cfg.kd.kd_loss_scale)
        # floats now: the schedule divides the returned loss tensor in place by the micro-batch count
        report = {k: float(v.detach()) for k, v in out.items()}
        return out["loss"], report

    def _forward_step(self, data_iter: Iterator[dict], stage: DistillationStage):
        batch = self._to_device(next(data_iter))
        output = stage(batch["tokens"], batch["position_ids"])
        if not self.ctx.is_last_stage:
            return output, None
        inter = stage.intermediate_states() if stage.use_teacher and stage._pairs else []
        teacher_logits, stage.teacher_logits = stage.teacher_logits, None  # do not keep them past the loss
        return output, partial(self._loss_func, batch, teacher_logits, inter)

    def _reduce_scalars(self, reports: list[dict], keys=LOSS_KEYS) -> dict:
        """Average over micro-batches (last stage) and DP ranks; the result is on every rank."""
        vec = torch.zeros(len(keys), dtype=torch.float64)
        if self.ctx.is_last_stage and reports:
            for i, k in enumerate(keys):
                vals = [float(r[k]) for r in reports if k in r]
                vec[i] = sum(vals) / len(vals) if vals else 0.0
        if self.ctx.on_gpu:
            vec = vec.cuda()
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
        if self.stage.teacher is not None:
            self.stage.teacher.eval()
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        if self.proj_opt is not None:
            self.proj_opt.zero_grad(set_to_none=True)
        kwargs = {}
        if self.ctx.pp_size > 1 and self.stage.use_teacher:
            kwargs["adjust_tensor_shapes_fn"] = adjust_tensor_shapes(self.stage.teacher_hidden)
        reports = get_forward_backward_func()(
            forward_step_func=self._forward_step, data_iterator=iter(micro_batches), model=[self.stage],
            num_microbatches=len(micro_batches), seq_length=self.seq, micro_batch_size=self.mbs,
            forward_only=False, **kwargs,
        )
        lr = self._lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        ok, grad_norm, _ = self.optimizer.step()
        if self.proj_opt is not None:
            self._step_projection(lr)
        scalars = self._reduce_scalars(reports)
        scalars.update(lr=lr, grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                       update_ok=float(bool(ok)))
        return scalars

    def _step_projection(self, lr: float) -> None:
        """Average the KD projection's gradients over DP, clip them, and step its AdamW."""
        params = [p for p in self.stage.projection.parameters() if p.grad is not None]
        if self.ctx.dp_size > 1:
            for p in params:
                dist.all_reduce(p.grad, group=self.ctx.dp_group)
                p.grad /= self.ctx.dp_size
        if self.cfg.trainer.gradient_clip_val > 0 and params:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.trainer.gradient_clip_val)
        for g in self.proj_opt.param_groups:
            g["lr"] = lr
        self.proj_opt.step()

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> Optional[dict]:
        """Student LM loss and perplexity on ``trainer.limit_val_batches`` validation micro-batches."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        it = self.data.valid_iterator()
        if it is None or self.cfg.trainer.limit_val_batches < 1:
            return None
        batches = []
        for _ in range(self.cfg.trainer.limit_val_batches):
            try:
                batches.append(next(it))
            except StopIteration:
                break
        if not batches:
            return None
        self.stage.eval()
        self.stage.use_teacher = False

        def loss_func(batch, output):
            from megatron.core import tensor_parallel

            tok = tensor_parallel.vocab_parallel_cross_entropy(output.float(), batch["labels"])
            mask = batch["loss_mask"].float()
            return tok.sum() * 0, {"lm_sum": float((tok * mask).sum()), "tokens": float(mask.sum())}

        def fwd(data_iter, stage):
            batch = self._to_device(next(data_iter))
            return stage(batch["tokens"], batch["position_ids"]), partial(loss_func, batch)

        try:
            reports = get_forward_backward_func()(
                forward_step_func=fwd, data_iterator=iter(batches), model=[self.stage],
                num_microbatches=len(batches), seq_length=self.seq, micro_batch_size=self.mbs, forward_only=True)
        finally:
            self.stage.use_teacher = self.distill
            self.stage.train()
        sums = self._reduce_scalars([{"lm_sum": r["lm_sum"], "tokens": r["tokens"]} for r in reports] if reports
                                    else [], keys=("lm_sum", "tokens"))
        # _reduce_scalars averages; the ratio of averages is the token-weighted mean
        val_loss = sums["lm_sum"] / max(sums["tokens"], 1.0)
        return {"val_loss": val_loss, "val_ppl": perplexity(val_loss)}

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self) -> dict:
        c = self.ctx
        return {"consumed_samples": self.consumed_samples, "mode": self.cfg.mode,
                "layout": {"tp": c.tp_size, "pp": c.pp_size, "dp": c.dp_size},
                "optimizer": self.cfg.model.optim.name, "max_steps": self.cfg.trainer.max_steps}

    def _extra_state(self) -> dict:
        if self.stage.projection is None:
            return {}
        return {"projection": self.stage.projection.state_dict(), "projection_optim": self.proj_opt.state_dict()}

    def save(self) -> Path:
        """Write a train-state checkpoint for the current step. Collective."""
        return checkpointing.save_train_state(
            self.run_dir, self.step, self.ddp, self.student_cfg, self.optimizer, self._trainer_state(),
            keep_last_k=self.cfg.exp_manager.keep_last_k, tokenizer_dir=self.tokenizer_dir,
            extra_state=self._extra_state())

    def maybe_resume(self) -> bool:
        """Resume from the run directory's latest checkpoint if ``exp_manager.resume_if_exists``."""
        if not self.cfg.exp_manager.resume_if_exists:
            return False
        path = checkpointing.latest_checkpoint(self.run_dir)
        if path is None:
            return False
        saved = checkpointing.read_trainer_state(path).get("layout", {})
        now = {"tp": self.ctx.tp_size, "pp": self.ctx.pp_size, "dp": self.ctx.dp_size}
        if self.use_distopt and saved and (saved["tp"], saved["pp"]) != (now["tp"], now["pp"]):
            raise ConfigError(
                f"{path} was saved at TP={saved['tp']} PP={saved['pp']} with the distributed optimizer, whose state "
                f"reshards over data-parallel ranks only; resume with model.tensor_model_parallel_size={saved['tp']} "
                f"model.pipeline_model_parallel_size={saved['pp']}, or load {path}/model as model.restore_from_path "
                "in a new run directory")
        if saved and saved != now:
            log.info("resuming a checkpoint saved at %s with layout %s", saved, now)
        state, extra = checkpointing.load_train_state(path, self.ddp, self.student_cfg, self.optimizer)
        self.step = int(state["step"])
        self.consumed_samples = int(state["consumed_samples"])
        if self.stage.projection is not None and extra.get("projection"):
            self.stage.projection.load_state_dict(extra["projection"])
            self.proj_opt.load_state_dict(extra["projection_optim"])
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
                    log.info("step %d/%d loss %.4f (kd %.4f lm %.4f) lr %.3e grad_norm %.3f %.0f tokens/s",
                             self.step, t.max_steps, scalars["loss"], scalars["kd_loss"], scalars["lm_loss"],
                             scalars["lr"], scalars["grad_norm"], scalars["tokens_per_s"])
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
        """Release the TensorBoard writer and the capture hooks."""
        self.stage.remove_hooks()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
