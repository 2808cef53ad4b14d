"""Budget search scored by short distillation (Minitron: zero-shot loss is a poor predictor after retraining).

:func:`search_by_distillation` first runs the zero-shot budget search (``prune.target_params``,
:func:`nemo_minitron.prune.pipeline.run_prune`, which caches the importance scores), then takes
its ``top_n`` candidate shapes, prunes each with explicit targets from the same cached scores (so
each candidate is exactly the shape the search scored), distils each for ``N`` steps with
:func:`nemo_minitron.train.recipe.run` (the steps' batches spread over all data-parallel replicas)
and ranks the candidates by their validation loss after those steps, next to their zero-shot
loss and rank. Every candidate's outputs are kept, so an interrupted search continues.

Layout of ``work_dir``: ``zero_shot/`` (the search's best), ``candidate_<i>/pruned``,
``candidate_<i>/distilled``, ``candidate_<i>/runs``, and ``search_kd.json`` (the report).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable

from nemo_minitron.config.model import ConfigError
from nemo_minitron.config.prune import ExportConfig, MegatronPruneConfig
from nemo_minitron.logging import get_logger

log = get_logger(__name__)

REPORT = "search_kd.json"
SHAPE_KEYS = ("hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "num_layers")


def candidate_job(job: MegatronPruneConfig, cand: dict, save_path: Path) -> MegatronPruneConfig:
    """The pruning job that builds exactly the searched shape ``cand`` from the same (cached) scores."""
    p = dataclasses.replace(job.prune, target_params=None, drop_layers=[], plot=False)
    for key in SHAPE_KEYS:
        setattr(p, key, int(cand[key]))
    # the search picks layers per layer (layer_loss or cosine); an explicit depth target must do the same
    p.depth_method = "layer_loss" if job.prune.depth_method == "layer_loss" else "cosine"
    return MegatronPruneConfig(model=job.model, prune=p, export=ExportConfig(save_path=str(save_path), overwrite=True))


def _write_json(path: Path, obj) -> None:
    """Rank 0 writes ``obj`` atomically (temporary sibling, then rename)."""
    from nemo_minitron.atomic import barrier, is_rank0, write_text_atomic

    if is_rank0():
        write_text_atomic(path, json.dumps(obj, indent=2))
    barrier()


def rank_rows(rows: list[dict]) -> list[dict]:
    """Rows sorted by loss after distillation, with ``kd_rank`` and ``zero_shot_rank`` (1 = best)."""
    by_zero = sorted(range(len(rows)), key=lambda i: rows[i]["zero_shot_val_loss"])
    for r, i in enumerate(by_zero, 1):
        rows[i]["zero_shot_rank"] = r
    out = sorted(rows, key=lambda row: (row["kd_val_loss"], -row["params"]))
    for r, row in enumerate(out, 1):
        row["kd_rank"] = r
    return out


def search_by_distillation(job: MegatronPruneConfig, top_n: int, train_config: Callable[[Path, Path, Path], object],
                           work_dir: str | os.PathLike) -> dict:
    """Zero-shot search, then ``top_n`` candidates distilled and re-ranked. Collective; returns the report.

    ``train_config(student, run_dir, save_path)`` returns the :class:`~nemo_minitron.config.train.TrainConfig`
    of one candidate's short distillation (same teacher, data, steps and schedule for every candidate).
    The report's ``status`` is ``preempted`` when a distillation was stopped by a signal (run again to continue).
    """
    from nemo_minitron.checkpoint import is_checkpoint
    from nemo_minitron.prune.pipeline import REPORT_FILE, run_prune
    from nemo_minitron.train.recipe import run

    if job.prune.target_params is None:
        raise ConfigError("search_by_distillation needs prune.target_params (a parameter budget to search)")
    if top_n < 1:
        raise ConfigError(f"top_n={top_n} must be >= 1")
    if not job.prune.importance_cache:
        raise ConfigError("set prune.importance_cache: every candidate is pruned from the same cached scores")
    work = Path(work_dir).absolute()
    zero = work / "zero_shot"
    if not is_checkpoint(zero):
        run_prune(dataclasses.replace(job, export=ExportConfig(save_path=str(zero), overwrite=True)))
    ranking = json.loads((zero / REPORT_FILE).read_text())["search"]
    rows, status = [], "completed"
    for i, cand in enumerate(ranking[:top_n]):
        d = work / f"candidate_{i}"
        if not is_checkpoint(d / "pruned"):
            run_prune(candidate_job(job, cand, d / "pruned"))
        done = d / "result.json"
        if done.is_file() and is_checkpoint(d / "distilled"):
            rows.append(json.loads(done.read_text()))
            continue
        result = run(train_config(d / "pruned", d / "runs", d / "distilled"))
        if result.status != "completed":
            status = "preempted"
            break
        if result.val is None:
            raise ConfigError("the candidates' distillation has no validation: set trainer.val_check_interval and "
                              "a data split with validation samples")
        row = {**{k: int(cand[k]) for k in SHAPE_KEYS}, "params": int(cand["params"]),
               "dropped_layers": cand.get("dropped_layers"), "zero_shot_val_loss": cand["val_loss"],
               "kd_val_loss": result.val["val_loss"], "kd_steps": result.step, "path": str(d / "distilled")}
        _write_json(done, row)
        rows.append(row)
    report = {"status": status, "target_params": job.prune.target_params, "top_n": top_n,
              "candidates": rank_rows(rows) if status == "completed" else rows}
    if status == "completed" and rows:
        report["best"] = report["candidates"][0]
    _write_json(work / REPORT, report)
    if status == "completed":
        log.info("search by distillation: best %s (val loss %.4f after %d steps; zero-shot rank %d)",
                 {k: report["best"][k] for k in SHAPE_KEYS}, report["best"]["kd_val_loss"], report["best"]["kd_steps"],
                 report["best"]["zero_shot_rank"])
    return report
