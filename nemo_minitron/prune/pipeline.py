"""The pruning recipe in named phases: prepare → scores → decide → apply and save → report.

* **prepare** checks the targets and the output path and initialises the user's TP × PP layout;
* **scores** loads the checkpoint at that layout (each rank its shard), reads the importance cache or
  runs the hooked calibration pass (scores reduced exactly, identical on every rank), and measures the
  validation loss and the layer/block-removal losses for depth selection: a removed layer is skipped
  in the forward, and the candidates are spread over data-parallel replicas;
* **decide** turns scores and targets into a :class:`~nemo_minitron.prune.surgery.PrunePlan`; a budget
  search builds each width candidate at the layout from the sharded model, skips its dropped layers,
  and ranks the candidates by validation loss (again spread over replicas);
* **apply and save** builds the pruned model at the same layout and fills it tensor by tensor
  (:mod:`~nemo_minitron.prune.sharded`: one full layer tensor at a time), validates it and saves the
  dist checkpoint collectively (it loads at any TP/PP). When the pruned shape does not fit the layout
  (e.g. a layer count not divisible by PP) this phase falls back to a replicated TP=1 copy;
* **report** writes ``pruning_report.json`` (and the layer plot) from one
  :class:`~nemo_minitron.prune.report.PruneResult`.

Layers are 0-based inside; ``prune.drop_layers`` and the report use 1-indexed layer numbers.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from nemo_minitron import runtime
from nemo_minitron.checkpoint import load_checkpoint, load_model_config, tokenizer_path
from nemo_minitron.config.checks import shards_evenly
from nemo_minitron.config.model import ConfigError, ModelConfig, apply_layout
from nemo_minitron.config.prune import MegatronPruneConfig, PruneConfig
from nemo_minitron.interop.export import check_export_path, report_dir, save_result
from nemo_minitron.logging import get_logger
from nemo_minitron.models.builder import build_gpt_model
from nemo_minitron.prune import calibrate as cal
from nemo_minitron.prune.depth import block_candidates, select_drop
from nemo_minitron.prune.hooks import ImportanceCollector, ImportanceScores
from nemo_minitron.prune.plan import make_plan
from nemo_minitron.prune.report import PruneResult, build_report, plot_layers, write_json_atomic
from nemo_minitron.prune.score_cache import cache_key, load_cache, save_cache
from nemo_minitron.prune.search import Candidate, candidate_plan, enumerate_candidates, rank_candidates
from nemo_minitron.prune.sharded import apply_plan_sharded
from nemo_minitron.prune.surgery import PrunePlan, prune_state_dict, pruned_config
from nemo_minitron.prune.validate import validate_targets

log = get_logger(__name__)
REPORT_FILE = "pruning_report.json"
PLOT_FILE = "layer_importance.png"
__all__ = ["REPORT_FILE", "PLOT_FILE", "build_pruned_sharded", "load_cache", "resolve_model_config", "run_prune",
           "save_cache", "zero_shot_losses"]


def resolve_model_config(job: MegatronPruneConfig) -> ModelConfig:
    """Architecture from the checkpoint, runtime layout from ``job.model``; validated."""
    rt = job.model
    from nemo_minitron.interop.convert import resolve_checkpoint

    if not rt.restore_from_path:
        raise ConfigError("model.restore_from_path is required (a megatron, NeMo 2 or .nemo checkpoint)")
    restore = resolve_checkpoint(rt.restore_from_path)  # NeMo 2 / .nemo: converted once, next to the source
    arch = load_model_config(restore)
    return apply_layout(rt, arch).replace(precision=rt.precision, restore_from_path=str(restore)).validate("model")


@dataclasses.dataclass
class Prepared:
    """Output of :func:`prepare`."""

    job: MegatronPruneConfig
    """The job as given."""
    cfg: ModelConfig
    """Original architecture at the user's layout."""
    ctx: Any
    """ParallelContext of the user's layout."""
    out: Path
    """Where the pruned checkpoint goes."""
    started: float
    """``perf_counter`` at the start of the run."""

    @property
    def p(self) -> PruneConfig:
        """The prune settings."""
        return self.job.prune

    @property
    def replica(self):
        """The rank's context inside its data-parallel replica (no DP sharding of samples)."""
        return dataclasses.replace(self.ctx, dp_rank=0, dp_size=1, dp_group=None)


@dataclasses.dataclass
class Scored:
    """Output of :func:`compute_scores`."""

    model: Optional[torch.nn.Module]
    """The original model, this rank's shard at the user's layout."""
    scores: Optional[ImportanceScores]
    """Full importance scores (0-based layer keys), identical on every rank."""
    val: Optional[cal.TokenBatch]
    """Validation windows (None without calibration data or cache)."""
    loss_before: Optional[float]
    """Validation loss of the original model."""
    calib_seconds: Optional[float]
    """Calibration wall time (None when the scores came from the cache)."""


@dataclasses.dataclass
class Decision:
    """Output of :func:`decide`."""

    plan: PrunePlan
    """What to keep."""
    dropped_layers: list[int]
    """0-based removed layers."""
    ranking: Optional[list[dict[str, Any]]] = None
    """Budget-search candidates, best first."""


# --------------------------------------------------------------------------- helpers
def _spread(items: list, fn: Callable[[Any], Any], ctx, desc: str = "") -> list:
    """Evaluate ``fn`` on ``items`` round-robin over data-parallel replicas; every rank gets all results.

    All ranks of one replica (its TP × PP grid) evaluate the same items together.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    mine = {i: fn(items[i]) for i in tqdm(range(ctx.dp_rank, len(items), ctx.dp_size), desc=desc,
                                          disable=ctx.rank != 0)}
    log.info("%s: %d evaluations over %d replica(s) in %.1f s", desc, len(items), ctx.dp_size,
             time.perf_counter() - t0)
    if ctx.dp_size > 1:
        gathered: list[Any] = [None] * ctx.dp_size
        dist.all_gather_object(gathered, mine, group=ctx.dp_group)
        mine = {i: v for g in gathered for i, v in g.items()}
    return [mine[i] for i in range(len(items))]


def build_pruned_sharded(model: torch.nn.Module, cfg: ModelConfig, plan: PrunePlan, ctx) -> tuple[torch.nn.Module,
                                                                                                   ModelConfig]:
    """The pruned model at ``cfg``'s layout, filled from the sharded ``model`` (collective over TP × PP)."""
    new_cfg = pruned_config(cfg, plan)
    new = build_gpt_model(new_cfg)
    apply_plan_sharded(model, new, cfg, plan, ctx)
    return new, new_cfg


def _calibrate(model, cfg: ModelConfig, calib: cal.TokenBatch, ctx, p: PruneConfig) -> tuple[ImportanceScores, float]:
    collector = ImportanceCollector(model, ctx, cfg.num_attention_heads, cfg.query_groups, p.seq_aggregation,
                                    p.batch_aggregation, cfg.normalization, cfg.layernorm_epsilon)
    if not p.mask_padding:
        calib = cal.TokenBatch(calib.tokens, torch.ones_like(calib.mask))
    try:
        seconds = cal.run_forward(model, calib, ctx, p.calib_batch_size, collector=collector)
    finally:
        collector.remove()
    return collector.finalize(), seconds


def _load_samples(p: PruneConfig, n_cal: int, tok_dir) -> tuple[Optional[cal.TokenBatch], cal.TokenBatch]:
    if p.val_data:
        calib = cal.load_tokens(p.calib_data, n_cal, p.calib_seq_length, p.calib_seed, tok_dir) if n_cal else None
        return calib, cal.load_tokens(p.val_data, p.num_val_samples, p.calib_seq_length, p.calib_seed, tok_dir)
    # held back: the samples after the calibration ones in the same seeded draw
    data = cal.load_tokens(p.calib_data, n_cal + p.num_val_samples, p.calib_seq_length, p.calib_seed, tok_dir)
    return data.slice(0, n_cal), data.slice(n_cal, len(data))


# --------------------------------------------------------------------------- phases
def prepare(job: MegatronPruneConfig) -> Prepared:
    """Check targets and output before any work; initialise the user's layout."""
    started = time.perf_counter()
    cfg = resolve_model_config(job)
    validate_targets(job.prune, cfg)
    out = check_export_path(job.export.save_path, job.export.format, overwrite=job.export.overwrite,
                            inputs=(cfg.restore_from_path, job.model.restore_from_path))
    ctx = runtime.init_model_parallel(cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size, cfg.seed)
    return Prepared(job, cfg, ctx, out, started)


def compute_scores(run: Prepared) -> Scored:
    """Load the shard, get importance scores (cache or calibration), validation and removal losses."""
    p, cfg, ctx = run.p, run.cfg, run.ctx
    needs_scores = not p.drop_layers
    key = cache_key(cfg, p)
    cached = load_cache(p.importance_cache, key) if p.importance_cache else None
    model = build_gpt_model(cfg)
    load_checkpoint(model, cfg, cfg.restore_from_path)
    scores = val = calib_seconds = None
    if cached is not None:
        log.info("importance scores read from %s: no calibration pass", p.importance_cache)
        scores = ImportanceScores.from_dict(cached["scores"]) if cached["scores"] is not None else None
        if cached.get("val_tokens") is not None:
            val = cal.TokenBatch(cached["val_tokens"], cached["val_mask"])
    if (cached is None or (needs_scores and scores is None)) and p.calib_data:
        calib, val = _load_samples(p, p.num_calib_size if needs_scores else 0, tokenizer_path(cfg.restore_from_path))
        if needs_scores:
            scores, calib_seconds = _calibrate(model, cfg, calib, ctx, p)
    elif needs_scores and scores is None:
        raise ConfigError(f"prune.importance_cache={p.importance_cache} has no usable scores and prune.calib_data "
                          "is not set")
    mbs = p.calib_batch_size
    loss_before = cal.eval_loss(model, val, ctx, mbs) if val is not None else None

    def removal(cands: list[list[int]]) -> list[float]:
        def one(c):
            with cal.skip_layers(model, c):
                return cal.eval_loss(model, val, run.replica, mbs)
        return _spread(cands, one, ctx, "layer-removal loss")

    L = cfg.num_layers
    dirty = cached is None
    depth_needed = p.num_layers is not None and p.num_layers < L
    if depth_needed and val is None:
        raise ConfigError("prune.num_layers needs validation samples: set prune.calib_data")
    if depth_needed and p.depth_method == "block_loss" and (L - p.num_layers) not in scores.block_loss:
        cands = block_candidates(L, L - p.num_layers)
        scores.block_loss[L - p.num_layers] = {c[0]: v for c, v in zip(cands, removal(cands))}
        dirty = True
    if p.depth_method == "layer_loss" and (depth_needed or p.target_params) and not scores.layer_loss:
        scores.layer_loss = dict(zip(range(L), removal([[n] for n in range(L)])))
        dirty = True
    if p.importance_cache and dirty:
        save_cache(p.importance_cache, key, scores, val)
    return Scored(model, scores, val, loss_before, calib_seconds)


def zero_shot_losses(run: Prepared, s: Scored, cands: list[Candidate]) -> list[tuple[float, list[int]]]:
    """(validation loss, 0-based dropped layers) per candidate, at the run's layout, spread over DP replicas."""
    def evaluate(c):
        width, drop = candidate_plan(run.cfg, s.scores, c, run.p.depth_method)
        model = build_pruned_sharded(s.model, run.cfg, width, run.ctx)[0] if width != PrunePlan() else s.model
        with cal.skip_layers(model, drop):
            return cal.eval_loss(model, s.val, run.replica, run.p.calib_batch_size), drop

    return _spread(cands, evaluate, run.ctx, "budget search")


def _search(run: Prepared, s: Scored) -> Decision:
    p, cfg = run.p, run.cfg
    cands = enumerate_candidates(cfg, p.target_params, p.search_tolerance, p.search_top_k,
                                 p.search_max_width_pruning, p.search_max_depth_pruning, p.search_hidden_divisor,
                                 p.search_ffn_divisor, p.search_prune_heads, cfg.tensor_model_parallel_size)
    if not cands:
        raise ConfigError(f"prune.target_params={p.target_params}: no candidate shape within "
                          f"prune.search_tolerance={p.search_tolerance} of the budget; widen the search")
    results = zero_shot_losses(run, s, cands)
    ranking = rank_candidates(cands, [r[0] for r in results], [r[1] for r in results])
    best = ranking[0]
    plan = make_plan(cfg, s.scores, best["ffn_hidden_size"], best["num_attention_heads"], best["num_query_groups"],
                     best["hidden_size"], best["dropped_layers"])
    return Decision(plan, best["dropped_layers"], ranking)


def decide(run: Prepared, s: Scored) -> Decision:
    """The plan: from the budget search, or from explicit width targets and a depth selection."""
    p, cfg = run.p, run.cfg
    if p.target_params is not None:
        return _search(run, s)
    L = cfg.num_layers
    if p.drop_layers:
        drop = sorted(n - 1 for n in p.drop_layers)  # user-facing layer numbers are 1-indexed
    elif p.num_layers is not None and p.num_layers < L:
        drop = select_drop(p.depth_method, L, p.num_layers, s.scores.layer_cosine, s.scores.layer_loss,
                           s.scores.block_loss.get(L - p.num_layers))
    else:
        drop = []
    plan = make_plan(cfg, s.scores, p.ffn_hidden_size, p.num_attention_heads, p.num_query_groups, p.hidden_size,
                     drop)
    return Decision(plan, drop)


def _apply_replicated(run: Prepared, plan: PrunePlan) -> tuple[torch.nn.Module, ModelConfig, Any]:
    """Fallback: a full TP=1 copy on every rank, sliced whole (every rank a data-parallel replica)."""
    ctx1 = runtime.init_model_parallel(1, 1, run.cfg.seed)
    full_cfg = run.cfg.replace(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    model = build_gpt_model(full_cfg)
    load_checkpoint(model, full_cfg, full_cfg.restore_from_path)
    new_sd, new_cfg = prune_state_dict(model.state_dict(), full_cfg, plan)
    del model
    pruned = build_gpt_model(new_cfg)
    missing, unexpected = pruned.load_state_dict(new_sd, strict=False)
    bad = [k for k in list(missing) + list(unexpected) if not k.endswith("_extra_state")]
    if bad:
        raise RuntimeError(f"pruned state dict does not fit the pruned model: {bad}")
    return pruned, new_cfg, ctx1


def apply_and_save(run: Prepared, s: Scored, d: Decision,
                   extras: Optional[Callable[[Path, ModelConfig, Optional[float], bool], None]] = None
                   ) -> tuple[ModelConfig, Optional[float], bool]:
    """Build, validate and save the pruned model. Returns (pruned config, validation loss, sharded?).

    ``extras(directory, pruned config, validation loss, sharded?)`` runs on rank 0 before the
    checkpoint is renamed into place, to add the files that appear with it (the report).
    """
    cfg, ctx = run.cfg, run.ctx
    new_cfg = pruned_config(cfg, d.plan)
    sharded = shards_evenly(new_cfg, ctx.tp_size, ctx.pp_size)
    if sharded:
        pruned, new_cfg = build_pruned_sharded(s.model, cfg, d.plan, ctx)
        s.model = None  # the original shard is no longer needed
    else:
        log.warning("the pruned shape (%d layers, ffn %d, %d heads, %d groups) does not fit TP=%d x PP=%d: "
                    "slicing a full replicated copy instead", new_cfg.num_layers, new_cfg.ffn_hidden_size,
                    new_cfg.num_attention_heads, new_cfg.query_groups, ctx.tp_size, ctx.pp_size)
        s.model = None
        pruned, new_cfg, ctx = _apply_replicated(run, d.plan)
        ctx = dataclasses.replace(ctx, dp_rank=0, dp_size=1, dp_group=None)
    loss_after = cal.eval_loss(pruned, s.val, ctx, run.p.calib_batch_size) if s.val is not None else None
    summary = {"original": cfg.arch_dict(), "dropped_layers": [n + 1 for n in d.dropped_layers],
               "val_loss_before": s.loss_before, "val_loss_after": loss_after}
    add_files = None if extras is None else (lambda tmp: extras(tmp, new_cfg, loss_after, sharded))
    save_result(pruned, new_cfg.replace(name=f"{cfg.name}-pruned"), run.out, run.job.export.format,
                overwrite=run.job.export.overwrite, tokenizer_dir=tokenizer_path(cfg.restore_from_path),
                extra_metadata={"pruning": summary}, add_files=add_files)
    return new_cfg, loss_after, sharded


def write_report(directory: Path, run: Prepared, result: PruneResult) -> dict[str, Any]:
    """Write ``pruning_report.json`` (and the plot) into ``directory``; returns the report."""
    report = build_report(result)
    write_json_atomic(directory / REPORT_FILE, report)
    if run.p.plot and result.scores is not None:
        plot_layers(directory / PLOT_FILE, result.scores, result.dropped_layers)
    return report


def log_summary(run: Prepared, result: PruneResult, report: dict[str, Any]) -> None:
    """The one-line summary of a finished pruning job."""
    log.info("pruned %s: %d → %d parameters; val loss %s → %s; report %s", run.cfg.name,
             report["params"]["original"]["num_parameters"], report["params"]["pruned"]["num_parameters"],
             result.loss_before, result.loss_after, report_dir(run.out, run.job.export.format) / REPORT_FILE)


def run_prune(job: MegatronPruneConfig) -> dict[str, Any]:
    """Run the whole pruning job (collective under torchrun/srun). Returns the report dict."""
    run = prepare(job)
    scored = compute_scores(run)
    decision = decide(run, scored)
    val = scored.val

    def result_of(new_cfg: ModelConfig, loss_after: Optional[float], sharded: bool) -> PruneResult:
        return PruneResult(
            original=run.cfg, pruned=new_cfg, settings=run.p, plan=decision.plan,
            dropped_layers=decision.dropped_layers, scores=scored.scores, loss_before=scored.loss_before,
            loss_after=loss_after, val_samples=0 if val is None else len(val),
            val_seq_length=None if val is None else int(val.tokens.shape[1]), ranking=decision.ranking,
            calib_seconds=scored.calib_seconds, seconds=time.perf_counter() - run.started,
            world_size=dist.get_world_size(), sharded=sharded)

    written: dict[str, Any] = {}

    def add_report(tmp: Path, new_cfg: ModelConfig, loss_after: Optional[float], sharded: bool) -> None:
        written["report"] = write_report(tmp, run, result_of(new_cfg, loss_after, sharded))

    # the report is written into the checkpoint's temporary directory: both appear together, or neither
    new_cfg, loss_after, sharded = apply_and_save(run, scored, decision, extras=add_report)
    result = result_of(new_cfg, loss_after, sharded)
    report = written.get("report") or build_report(result)
    log_summary(run, result, report)
    return report
