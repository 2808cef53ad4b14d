"""The README demo: the Minitron recipe on the embedded default, next to the baselines that test its claims.

Steps (each skipped when its output is complete in ``work_dir``, so an interrupted demo continues):

1. corpus: the English Wikipedia excerpt of the gensim wheel (or ``corpus_dir``), split by article;
2. teacher: SmolLM2-135M-Instruct (4-bit GGUF) imported once, the corpus tokenized with its tokenizer;
3. correct: LM-loss fine-tuning of the teacher on the training split (:class:`~nemo_minitron.recipe.run.Recipe`);
4. prune: Minitron width pruning of the corrected teacher (activation importance on the training split);
5. distill: KD of the pruned student from the corrected teacher;
6. baselines: the same pruned student with the LM loss only, and a random-init student of the same shape,
   both with the same steps, tokens and schedule as KD and their own learning rate;
7. depth (only with ``depth_layers``): the corrected teacher pruned by depth to about the width student's
   parameter count, distilled with the same budget (the width-vs-depth pair);
8. evaluate: every model on held-out articles (``eval_split``, default test: never used to choose settings);
   the table, ``results.json`` and ``loss_curves.png`` (validation loss of KD vs LM-only, teacher line).

Each step's wall time in this invocation (a reused step costs about 0 s) and the process CPU time are in
``results.json`` (``stage_seconds``, ``cpu_seconds``) and in the table's footer.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from nemo_minitron.logging import get_logger
from nemo_minitron.recipe.config import CompressionStage, DemoConfig, MinitronConfig, TrainBudget
from nemo_minitron.recipe.run import Recipe, train_config

log = get_logger(__name__)

STAGE = "student"
"""Directory of the demo's width-pruning round under ``work_dir``."""

DEPTH_STAGE = "depth"
"""Directory of the depth-pruning round (``depth_layers``) under ``work_dir``."""


class StageTimes:
    """Wall and CPU seconds per named step of one invocation.

    CPU: user + system of this process and its finished children, all threads; on a busy machine CPU / cores
    estimates the idle wall time.

    ``started`` is the ``time.time()`` the total counts from (e.g. the process start); default now.
    """

    def __init__(self, started: Optional[float] = None):
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._t0 = time.time() if started is None else started

    @contextmanager
    def __call__(self, name: str):
        """Add the wall and CPU time of the ``with`` block to step ``name``."""
        t0, c0 = time.perf_counter(), self.cpu()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + self.cpu() - c0

    def total(self) -> float:
        """Wall seconds since ``started``."""
        return time.time() - self._t0

    @staticmethod
    def cpu() -> float:
        """CPU seconds of this process and its finished children so far."""
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def footer(self) -> str:
        """One line: every step's wall seconds, the total, and the process CPU seconds."""
        parts = ", ".join(f"{k} {v:.0f}" for k, v in self.seconds.items())
        return (f"wall time of this run (s): {parts}; total {self.total():.0f} "
                f"(process CPU time {self.cpu():.0f} s; a reused step costs ~0 s)")

    def to_dict(self) -> dict:
        """``stage_seconds``, ``stage_cpu_seconds``, ``total_seconds``, ``cpu_seconds`` for results.json."""
        return {"stage_seconds": self.seconds, "stage_cpu_seconds": self.cpu_seconds,
                "total_seconds": self.total(), "cpu_seconds": self.cpu()}


def depth_prune(demo: DemoConfig):
    """The depth round's pruning: ``depth_layers`` layers, the width round's calibration settings."""
    return dataclasses.replace(demo.prune, ffn_hidden_size=None, num_attention_heads=None, num_query_groups=None,
                               hidden_size=None, drop_layers=[], target_params=None, num_layers=demo.depth_layers,
                               importance_cache=None)


def recipe_config(demo: DemoConfig, work: Path) -> MinitronConfig:
    """The recipe settings of the demo (one width-pruning round, evaluated on ``eval_split``)."""
    prefix = work / "data" / "wiki"
    distill = dataclasses.replace(demo.distill, val_check_interval=demo.curve_every)
    stages = [CompressionStage(name=STAGE, prune=demo.prune, distill=distill)]
    if demo.depth_layers:
        stages.append(CompressionStage(name=DEPTH_STAGE, prune=depth_prune(demo), distill=distill))
    return MinitronConfig(
        work_dir=str(work), teacher=demo.teacher, train_data=f"{prefix}_train_text_document",
        valid_data=f"{prefix}_{demo.eval_split}_text_document", correction=demo.correction,
        stages=stages, seq_length=demo.seq_length,
        micro_batch_size=demo.micro_batch_size, global_batch_size=demo.global_batch_size, kd=demo.kd,
        eval_samples=demo.eval_samples, steps=["correct", "prune", "distill", "evaluate"])


def random_init_like(src: Path, out: Path, seed: int = 1234) -> Path:
    """A freshly initialised model with ``src``'s architecture and tokenizer, saved at ``out`` (once). Collective."""
    from nemo_minitron import runtime
    from nemo_minitron.checkpoint import is_checkpoint, load_model_config, save_checkpoint, tokenizer_path
    from nemo_minitron.models.builder import build_gpt_model

    if is_checkpoint(out):
        return out
    cfg = load_model_config(src).replace(seed=seed)
    runtime.init_model_parallel(1, 1, seed=seed)
    runtime.seed_everything(seed)
    save_checkpoint(build_gpt_model(cfg), cfg, out, overwrite=True, tokenizer_dir=tokenizer_path(src),
                    extra_metadata={"trained_by": "random init"})
    return out


def curve_anchors(recipe: Recipe, models: dict[str, Path], budget: TrainBudget) -> dict[str, float]:
    """Loss of each model on the windows the trainer validates on (cached in work_dir/curve_anchors.json)."""
    from nemo_minitron import runtime
    from nemo_minitron.checkpoint import tokenizer_path
    from nemo_minitron.train.evaluate import evaluate_checkpoint
    from nemo_minitron.train.recipe import MegatronData

    path = recipe.work / "curve_anchors.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    key = {n: str(p) for n, p in models.items()}
    if cached.get("models") == key:
        return cached["loss"]
    first = next(iter(models.values()))
    cfg = train_config(recipe.rc, "finetune", first, None, budget, recipe.work / "runs" / "anchors", Path("unused"))
    ctx = runtime.init_model_parallel(1, 1)
    data = MegatronData(cfg, ctx, tokenizer=str(tokenizer_path(first)), run_dir=recipe.work / "runs" / "anchors")
    it = data.valid_iterator()
    batches = [b for _, b in zip(range(cfg.trainer.limit_val_batches), it)]
    loss = {n: evaluate_checkpoint(p, batches)["loss"] for n, p in models.items()}
    from nemo_minitron.atomic import is_rank0

    if is_rank0():
        path.write_text(json.dumps({"models": key, "loss": loss}, indent=2))
    return loss


def run_demo(demo: DemoConfig, work: Path, corpus: Optional[Path] = None, started: Optional[float] = None) -> dict:
    """Every step of the demo; returns ``{"status", "rows", "lines", "plot", "stage_seconds"}``.

    rows/lines are empty when preempted. ``corpus`` None builds the embedded Wikipedia excerpt into
    ``work/wikipedia``; ``started`` is the ``time.time()`` the printed total counts from (default: this call).
    """
    from nemo_minitron.checkpoint import tokenizer_path
    from nemo_minitron.data.preprocess import preprocess_corpus
    from nemo_minitron.recipe import report

    timer = StageTimes(started)
    rc = recipe_config(demo.validate(), work)
    recipe = Recipe(rc)
    work.mkdir(parents=True, exist_ok=True)
    if corpus is None:
        from nemo_minitron.data.wikipedia_excerpt import build_wikipedia_excerpt

        corpus = work / "wikipedia"
        with timer("corpus"):
            build_wikipedia_excerpt(corpus)
    with timer("teacher import"):
        teacher = recipe.teacher()
    with timer("tokenize"):
        if not Path(f"{rc.train_data}.bin").is_file():
            preprocess_corpus(corpus, tokenizer_path(teacher), work / "data" / "wiki", workers=1)
    with timer("correct"):
        corrected = recipe.corrected_teacher(teacher)
    stage = rc.stages[0]
    with timer("prune"):
        pruned = recipe.prune(stage, corrected) if not recipe.preempted else None
    with timer("KD"):
        kd = recipe.distill(stage, pruned, corrected) if not recipe.preempted else None
    steps = demo.distill.steps
    baselines = []
    if demo.baselines:
        lm_budget = dataclasses.replace(stage.distill, lr=demo.lm_only_lr)
        rand_budget = dataclasses.replace(demo.distill, lr=demo.random_init_lr)
        for name, start, budget in (("lm_only", lambda: pruned, lm_budget),
                                    ("random_init", lambda: random_init_like(pruned, work / STAGE / "random_init"),
                                     rand_budget)):
            if recipe.preempted:
                break
            with timer(name.replace("_", "-")):
                out = recipe.train("finetune", start(), None, budget, work / STAGE / "runs" / name,
                                   work / STAGE / f"{name}_trained")
            baselines.append(out)
    depth = None
    if len(rc.stages) > 1 and not recipe.preempted:
        with timer("depth prune + KD"):
            depth_pruned = recipe.prune(rc.stages[1], corrected)
            depth = (depth_pruned, recipe.distill(rc.stages[1], depth_pruned, corrected)
                     if not recipe.preempted else None)
    if recipe.preempted:
        return {"status": "preempted", "rows": [], "lines": [], "plot": None, "stage_seconds": timer.seconds}

    tokens = steps * demo.global_batch_size * demo.seq_length
    ctok = rc.correction.steps * demo.global_batch_size * demo.seq_length
    models = [("teacher (original)", teacher, 0)]
    if corrected != teacher:
        models.append((f"teacher, corrected ({rc.correction.steps} steps)", corrected, ctok))
    models += [("pruned student, before training", pruned, 0), (f"pruned + KD ({steps} steps)", kd, tokens)]
    if baselines:
        models += [(f"pruned + LM loss only ({steps} steps)", baselines[0], tokens),
                   (f"random init + LM loss ({steps} steps)", baselines[1], tokens)]
    if depth:
        models += [(f"depth-pruned ({demo.depth_layers} layers), before training", depth[0], 0),
                   (f"depth-pruned + KD ({steps} steps)", depth[1], tokens)]
    with timer("evaluate"):
        rows = recipe.evaluate([(n, p) for n, p, _ in models])
    for row, (_, _, t) in zip(rows, models):
        row["train_tokens"] = t
    title = (f"Held-out perplexity ({rc.eval_samples} x {rc.seq_length} tokens of unseen articles, "
             f"wiki.{demo.eval_split}.raw); every student trained on the same {tokens:,} tokens")
    lines = report.table(rows, title)
    plot = None
    if demo.curve_every and baselines:
        with timer("curves"):
            anchors = curve_anchors(recipe, {"teacher": corrected, "pruned": pruned}, stage.distill)
            curves = {"KD": report.read_curve(work / STAGE / "runs" / "distill"),
                      "LM loss only": report.read_curve(work / STAGE / "runs" / "lm_only")}
            plot = report.plot_curves(work / "loss_curves.png", curves,
                                      {"teacher (corrected)": anchors["teacher"]}, start=anchors["pruned"])
    lines += ["", timer.footer()]
    from nemo_minitron.atomic import is_rank0, write_text_atomic

    if is_rank0():
        write_text_atomic(work / "results.json", json.dumps(
            {"rows": rows, **timer.to_dict(), "config": dataclasses.asdict(demo)}, indent=2))
    return {"status": "completed", "rows": rows, "lines": lines, "plot": str(plot) if plot else None,
            "stage_seconds": timer.seconds}
