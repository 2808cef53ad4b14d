"""The Minitron recipe, step by step, over the package's public entry points.

Layout of ``work_dir`` (every step is skipped when its complete output is there, so an interrupted
run continues where it stopped; an interrupted training resumes from its last train state)::

    teacher/                    the teacher as a nemo_minitron checkpoint (imported when it is HF/NeMo/GGUF)
    teacher_corrected/          correct: LM-loss fine-tune of the teacher on train_data
    runs/correct/               its train states and logs
    <stage>/importance.pt       prune: cached importance scores of the stage's input
    <stage>/pruned/             prune: the pruned student
    <stage>/distilled/          distill: the student after KD (runs in <stage>/runs/distill/)
    results.json                evaluate: held-out loss / perplexity of every model above
    export/{nemo2,hf}/          export: the final student in the other formats
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

from nemo_minitron.config.model import ConfigError
from nemo_minitron.logging import get_logger
from nemo_minitron.recipe.config import CompressionStage, MinitronConfig, TrainBudget

log = get_logger(__name__)


def train_config(rc: MinitronConfig, mode: str, student: Path, teacher: Optional[Path], budget: TrainBudget,
                 run_dir: Path, save_path: Path):
    """The :class:`TrainConfig` of one correction (``finetune``) or distillation run of the recipe."""
    from nemo_minitron.config.train import TrainConfig

    cfg = TrainConfig(name=f"minitron_{mode}", mode=mode, kd=dataclasses.replace(rc.kd))
    m = cfg.model
    m.restore_from_path = str(student)
    m.kd_teacher_restore_from_path = str(teacher) if mode == "distill" else None
    m.tensor_model_parallel_size, m.pipeline_model_parallel_size = (rc.tensor_model_parallel_size,
                                                                    rc.pipeline_model_parallel_size)
    m.micro_batch_size, m.global_batch_size, m.encoder_seq_length = (rc.micro_batch_size, rc.global_batch_size,
                                                                     rc.seq_length)
    m.optim.name, m.optim.lr = "adam", budget.lr
    m.optim.sched.warmup_steps, m.optim.sched.min_lr = budget.warmup_steps, budget.lr * budget.min_lr_ratio
    m.data.data_prefix, m.data.splits_string = [rc.train_data], "98,2,0"
    cfg.trainer.max_steps, cfg.trainer.log_every_n_steps = budget.steps, max(1, min(10, budget.steps // 4))
    cfg.trainer.val_check_interval = budget.val_check_interval or budget.steps
    cfg.trainer.limit_val_batches = 4
    cfg.exp_manager.explicit_log_dir = str(run_dir)
    cfg.exp_manager.checkpoint_every_n_steps = budget.checkpoint_every_n_steps
    cfg.export.save_path = str(save_path)
    cfg.export.overwrite = True  # the recipe owns its work_dir; a finished step is skipped before this
    return cfg


class Recipe:
    """Runs the steps of a :class:`MinitronConfig`; every method is collective under torchrun/srun."""

    def __init__(self, rc: MinitronConfig):
        self.rc = rc.validate()
        self.work = Path(rc.work_dir).absolute()
        self.preempted = False

    # ------------------------------------------------------------------ helpers
    def _want(self, step: str) -> bool:
        return step in self.rc.steps and not self.preempted

    @staticmethod
    def _done(path: Path) -> bool:
        from nemo_minitron.checkpoint import is_checkpoint

        return is_checkpoint(path)

    def _need(self, path: Path, step: str) -> Path:
        if not self._done(path):
            raise ConfigError(f"{path} does not exist yet: add {step!r} to steps (steps={self.rc.steps})")
        return path

    def train(self, mode: str, student: Path, teacher: Optional[Path], budget: TrainBudget, run_dir: Path,
              out: Path) -> Path:
        """One ``finetune`` (LM loss) or ``distill`` run into ``out`` (skipped when ``out`` is complete)."""
        from nemo_minitron.train.recipe import run

        if self._done(out):
            log.info("%s: %s exists, skipped", mode, out)
            return out
        result = run(train_config(self.rc, mode, student, teacher, budget, run_dir, out))
        if result.status != "completed":
            self.preempted = True
            log.warning("%s stopped at step %d (%s); run the same command again to continue", mode, result.step,
                        result.status)
        return out

    # ------------------------------------------------------------------ steps
    def teacher(self) -> Path:
        """The teacher as a nemo_minitron checkpoint (imported into work_dir/teacher once)."""
        from nemo_minitron.eval.perplexity import detect_format
        from nemo_minitron.interop.convert import convert

        fmt = detect_format(self.rc.teacher)
        if fmt == "megatron":
            return Path(self.rc.teacher).absolute()
        out = self.work / "teacher"
        if not self._done(out):
            convert(self.rc.teacher, fmt, out, "megatron", overwrite=out.exists())
        return out

    def corrected_teacher(self, teacher: Path) -> Path:
        """Step ``correct``: the LM-loss fine-tuned teacher (the teacher itself when correction.steps=0)."""
        if self.rc.correction.steps == 0:
            return teacher
        out = self.work / "teacher_corrected"
        if not self._want("correct"):
            return out if self.preempted else self._need(out, "correct")
        return self.train("finetune", teacher, None, self.rc.correction, self.work / "runs" / "correct", out)

    def prune(self, stage: CompressionStage, source: Path) -> Path:
        """Step ``prune`` of one round: importance (cached in <stage>/importance.pt), then the pruned student."""
        from nemo_minitron.config.model import ModelConfig
        from nemo_minitron.config.prune import ExportConfig, MegatronPruneConfig
        from nemo_minitron.prune.pipeline import run_prune

        out = self.work / stage.name / "pruned"
        if not self._want("prune"):
            return out if self.preempted else self._need(out, "prune")
        if self._done(out):
            log.info("prune %s: %s exists, skipped", stage.name, out)
            return out
        p = dataclasses.replace(stage.prune)
        p.calib_data = p.calib_data or self.rc.train_data
        p.importance_cache = p.importance_cache or str(self.work / stage.name / "importance.pt")
        p.plot = False
        model = ModelConfig(restore_from_path=str(source), tensor_model_parallel_size=self.rc.tensor_model_parallel_size,
                            pipeline_model_parallel_size=self.rc.pipeline_model_parallel_size)
        (self.work / stage.name).mkdir(parents=True, exist_ok=True)
        run_prune(MegatronPruneConfig(model=model, prune=p, export=ExportConfig(save_path=str(out), overwrite=True)))
        return out

    def distill(self, stage: CompressionStage, pruned: Path, teacher: Path) -> Path:
        """Step ``distill`` of one round (the pruned student itself when distill.steps=0)."""
        if stage.distill.steps == 0:
            return pruned
        out = self.work / stage.name / "distilled"
        if not self._want("distill"):
            return out if self.preempted else self._need(out, "distill")
        return self.train("distill", pruned, teacher, stage.distill, self.work / stage.name / "runs" / "distill",
                           out)

    def evaluate(self, models: list[tuple[str, Path]]) -> list[dict]:
        """Step ``evaluate``: loss and perplexity of every model on ``valid_data`` (results.json; cached rows reused)."""
        from nemo_minitron.atomic import is_rank0, temp_sibling
        from nemo_minitron.checkpoint import tokenizer_path
        from nemo_minitron.eval.perplexity import eval_windows, load_model, perplexity_of
        from nemo_minitron.models.params import count_parameters

        path = self.work / "results.json"
        old = {r["model"]: r for r in json.loads(path.read_text())["rows"]} if path.is_file() else {}
        rows = []
        for name, ckpt in models:
            key = {"model": name, "path": str(ckpt), "data": self.rc.valid_data, "samples": self.rc.eval_samples,
                   "seq_length": self.rc.seq_length}
            if name in old and all(old[name].get(k) == v for k, v in key.items()):
                rows.append(old[name])
                continue
            model, cfg, ctx = load_model(ckpt, self.rc.tensor_model_parallel_size,
                                         self.rc.pipeline_model_parallel_size)
            tokens, mask = eval_windows(self.rc.valid_data, self.rc.eval_samples, self.rc.seq_length,
                                        tokenizer=tokenizer_path(ckpt))
            sums = perplexity_of(model, tokens, mask, self.rc.micro_batch_size, ctx)
            rows.append({**key, "params": count_parameters(cfg).total, **sums.to_dict()})
            log.info("%s: loss %.4f, perplexity %.2f", name, sums.loss, sums.ppl)
        if is_rank0():
            tmp = temp_sibling(path)
            tmp.write_text(json.dumps({"rows": rows}, indent=2))
            os.replace(tmp, path)
        return rows

    def export(self, student: Path) -> dict[str, str]:
        """Step ``export``: the final student in every requested format (existing exports are kept)."""
        from nemo_minitron.interop.convert import convert

        out = {"megatron": str(student)}
        for fmt in self.rc.export_formats:
            if fmt == "megatron":
                continue
            dest = self.work / "export" / fmt
            if not dest.exists():
                convert(student, "megatron", dest, fmt)
            out[fmt] = str(dest)
        return out

    # ------------------------------------------------------------------ all
    def run(self) -> dict:
        """Every requested step in order; returns a summary (``status`` preempted when a training was stopped)."""
        self.work.mkdir(parents=True, exist_ok=True)
        original = self.teacher()
        corrected = self.corrected_teacher(original)
        models = [("teacher", original)] + ([("teacher (corrected)", corrected)] if corrected != original else [])
        source = corrected
        for stage in self.rc.stages:
            if self.preempted:
                break
            pruned = self.prune(stage, source)
            teacher = corrected if stage.teacher == "original" else source
            student = self.distill(stage, pruned, teacher)
            models.append((f"{stage.name}: pruned", pruned))
            if student != pruned:
                models.append((f"{stage.name}: distilled", student))
            source = student
        summary: dict = {"status": "preempted" if self.preempted else "completed", "final_student": str(source)}
        if self._want("evaluate") and self.rc.valid_data:
            summary["results"] = self.evaluate(models)
        if self._want("export") and self.rc.stages:
            summary["exports"] = self.export(source)
        return summary
