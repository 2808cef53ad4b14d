"""The pruning recipe end to end: validate → calibrate → score → (search) → slice → save → report.

Phase A runs at the user's TP/PP layout: the calibration pass with hooks, reduced over DP/TP/PP so
every rank holds the same full scores. Phase B re-initialises model parallelism as TP=1, PP=1 (every
rank a data-parallel replica), reloads the checkpoint resharded by megatron's dist_checkpointing, and
does everything that touches whole weights on that replicated full copy: layer-removal losses and
search candidates (spread over ranks), the surgery itself (identical on every rank by construction,
so the result equals a TP=1 prune), validation, and the collective checkpoint save, which any TP/PP
can load. The price is one full copy of the model per process during phase B.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from nemo_minitron import runtime
from nemo_minitron.atomic import check_output_path
from nemo_minitron.checkpoint import (
    COMPLETE_MARKER,
    load_checkpoint,
    load_model_config,
    read_metadata,
    save_checkpoint,
    tokenizer_path,
)
from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.config.prune import MegatronPruneConfig, PruneConfig
from nemo_minitron.logging import get_logger
from nemo_minitron.models.builder import build_gpt_model
from nemo_minitron.models.params import count_parameters
from nemo_minitron.prune import calibrate as cal
from nemo_minitron.prune.depth import block_candidates, select_drop
from nemo_minitron.prune.hooks import ImportanceCollector, ImportanceScores
from nemo_minitron.prune.plan import make_plan
from nemo_minitron.prune.report import plot_layers, scores_section, write_json_atomic
from nemo_minitron.prune.search import enumerate_candidates
from nemo_minitron.prune.surgery import prune_state_dict
from nemo_minitron.prune.validate import validate_targets

log = get_logger(__name__)
CACHE_VERSION = 1
REPORT_FILE = "pruning_report.json"
_CACHE_IDENTITY = ("version", "model", "checkpoint_created", "seq_aggregation", "batch_aggregation", "mask_padding")
PLOT_FILE = "layer_importance.png"


def resolve_model_config(job: MegatronPruneConfig) -> ModelConfig:
    """Architecture from the checkpoint, runtime layout from ``job.model``; validated."""
    rt = job.model
    if not rt.restore_from_path:
        raise ConfigError("model.restore_from_path is required (a megatron checkpoint directory)")
    arch = load_model_config(rt.restore_from_path)
    return arch.replace(tensor_model_parallel_size=rt.tensor_model_parallel_size,
                        pipeline_model_parallel_size=rt.pipeline_model_parallel_size, precision=rt.precision,
                        transformer_impl=rt.transformer_impl, seed=rt.seed,
                        restore_from_path=str(rt.restore_from_path)).validate("model")


def _cache_key(cfg: ModelConfig, p: PruneConfig) -> dict[str, Any]:
    meta = read_metadata(cfg.restore_from_path)
    return {"version": CACHE_VERSION, "model": cfg.arch_dict(), "checkpoint_created": meta.get("created_unix"),
            "calib_data": p.calib_data, "num_calib_size": p.num_calib_size, "calib_seq_length": p.calib_seq_length,
            "calib_seed": p.calib_seed, "num_val_samples": p.num_val_samples, "val_data": p.val_data,
            "seq_aggregation": p.seq_aggregation,
            "batch_aggregation": p.batch_aggregation, "mask_padding": p.mask_padding}


def load_cache(path: str, key: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Cached scores + validation tokens if ``path`` exists and was made with the same settings."""
    if not Path(path).is_file():
        return None
    data = torch.load(path, map_location="cpu", weights_only=True)
    saved = data.get("key") or {}
    # without calib_data (cache-only re-run) the cached calibration settings are accepted as they are
    fields = key if key.get("calib_data") else {k: v for k, v in key.items()
                                                  if k in _CACHE_IDENTITY or (k == "val_data" and v)}
    diff = sorted(k for k in fields if saved.get(k) != key[k])
    if diff:
        log.warning("importance cache %s was made with other settings (%s); recomputing", path, ", ".join(diff))
        return None
    return data


def save_cache(path: str, key: dict[str, Any], scores: Optional[ImportanceScores], val) -> None:
    """Rank 0 writes the cache atomically."""
    if dist.get_rank() != 0:
        return
    data = {"key": key, "scores": scores.to_dict() if scores is not None else None,
            "val_tokens": None if val is None else val.tokens, "val_mask": None if val is None else val.mask}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(data, tmp)
    tmp.replace(path)
    log.info("importance scores cached in %s", path)


def calibrate(cfg: ModelConfig, calib: cal.TokenBatch, ctx, p: PruneConfig) -> tuple[ImportanceScores, float]:
    """Phase A: load the checkpoint at the user's layout, run the hooked calibration pass, reduce the scores."""
    model = build_gpt_model(cfg)
    load_checkpoint(model, cfg, cfg.restore_from_path)
    collector = ImportanceCollector(model, ctx, cfg.num_attention_heads, cfg.query_groups, p.seq_aggregation,
                                    p.batch_aggregation, cfg.normalization, cfg.layernorm_epsilon)
    if not p.mask_padding:
        calib = cal.TokenBatch(calib.tokens, torch.ones_like(calib.mask))
    seconds = cal.run_forward(model, calib, ctx, p.calib_batch_size, collector=collector)
    collector.remove()
    scores = collector.finalize()
    del model
    return scores, seconds


def _spread(items: list, fn: Callable[[Any], Any], world: int, rank: int, desc: str = "") -> list:
    """Evaluate ``fn`` on ``items`` round-robin over ranks; every rank gets all results in order."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    mine = {i: fn(items[i]) for i in tqdm(range(rank, len(items), world), desc=desc, disable=rank != 0)}
    log.info("%s: %d evaluations over %d rank(s) in %.1f s", desc, len(items), world, time.perf_counter() - t0)
    if world == 1:
        return [mine[i] for i in range(len(items))]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    merged = {i: v for g in gathered for i, v in g.items()}
    return [merged[i] for i in range(len(items))]


def _build_pruned(full_cfg: ModelConfig, state: dict, plan) -> tuple[torch.nn.Module, ModelConfig]:
    new_sd, new_cfg = prune_state_dict(state, full_cfg, plan)
    model = build_gpt_model(new_cfg)
    missing, unexpected = model.load_state_dict(new_sd, strict=False)
    bad = [k for k in list(missing) + list(unexpected) if not k.endswith("_extra_state")]
    if bad:
        raise RuntimeError(f"pruned state dict does not fit the pruned model: {bad}")
    return model, new_cfg


def run_prune(job: MegatronPruneConfig) -> dict[str, Any]:
    """Run the whole pruning job (collective under torchrun/srun). Returns the report dict."""
    t0 = time.perf_counter()
    p = job.prune
    cfg = resolve_model_config(job)
    validate_targets(p, cfg)
    out = check_output_path(job.export.save_path, "export.save_path", overwrite=job.export.overwrite,
                            inputs=(cfg.restore_from_path,), markers=(COMPLETE_MARKER,), exists_error=ConfigError)
    ctx = runtime.init_model_parallel(cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size, cfg.seed)
    tok_dir = tokenizer_path(cfg.restore_from_path)
    needs_scores = not p.drop_layers
    key = _cache_key(cfg, p)
    cached = load_cache(p.importance_cache, key) if p.importance_cache else None
    calib_seconds, scores, val = None, None, None
    if cached is not None:
        log.info("importance scores read from %s: no calibration pass", p.importance_cache)
        scores = ImportanceScores.from_dict(cached["scores"]) if cached["scores"] is not None else None
        if cached.get("val_tokens") is not None:
            val = cal.TokenBatch(cached["val_tokens"], cached["val_mask"])
    if (cached is None or (needs_scores and scores is None)) and p.calib_data:
        n_cal = p.num_calib_size if needs_scores else 0
        if p.val_data:
            calib = cal.load_tokens(p.calib_data, n_cal, p.calib_seq_length, p.calib_seed, tok_dir) if n_cal else None
            val = cal.load_tokens(p.val_data, p.num_val_samples, p.calib_seq_length, p.calib_seed, tok_dir)
        else:  # held back: the samples after the calibration ones in the same seeded draw
            data = cal.load_tokens(p.calib_data, n_cal + p.num_val_samples, p.calib_seq_length, p.calib_seed, tok_dir)
            calib, val = data.slice(0, n_cal), data.slice(n_cal, len(data))
        if needs_scores:
            scores, calib_seconds = calibrate(cfg, calib, ctx, p)
    elif needs_scores and scores is None:
        raise ConfigError(f"prune.importance_cache={p.importance_cache} has no usable scores and prune.calib_data "
                          "is not set")

    # ---- phase B: full replicated copy (TP=1, PP=1; every rank a data-parallel replica)
    ctx1 = runtime.init_model_parallel(1, 1, cfg.seed)
    local = dataclasses.replace(ctx1, dp_rank=0, dp_size=1, dp_group=None)
    full_cfg = cfg.replace(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    model = build_gpt_model(full_cfg)
    load_checkpoint(model, full_cfg, cfg.restore_from_path)
    mbs = p.calib_batch_size
    loss_before = cal.eval_loss(model, val, local, mbs) if val is not None else None

    def removal(cands: list[list[int]]) -> list[float]:
        def one(c):
            with cal.skip_layers(model, c):
                return cal.eval_loss(model, val, local, mbs)
        return _spread(cands, one, ctx1.world_size, ctx1.rank, "layer-removal loss")

    L = cfg.num_layers
    cache_dirty = cached is None
    depth_needed = p.num_layers is not None and p.num_layers < L
    if depth_needed and val is None:
        raise ConfigError("prune.num_layers needs validation samples: set prune.calib_data")
    if depth_needed and p.depth_method == "block_loss" and (L - p.num_layers) not in scores.block_loss:
        n_drop = L - p.num_layers
        cands = block_candidates(L, n_drop)
        scores.block_loss[n_drop] = {c[0]: v for c, v in zip(cands, removal(cands))}
        cache_dirty = True
    if ((depth_needed and p.depth_method == "layer_loss") or (p.target_params and p.depth_method == "layer_loss")) \
            and not scores.layer_loss:
        scores.layer_loss = dict(zip(range(1, L + 1), removal([[n] for n in range(1, L + 1)])))
        cache_dirty = True
    if p.importance_cache and cache_dirty:
        save_cache(p.importance_cache, key, scores, val)

    state = {k: v for k, v in model.state_dict().items()}
    per_layer_method = "layer_loss" if p.depth_method == "layer_loss" else "cosine"
    ranking = None
    if p.target_params is not None:
        cands = enumerate_candidates(cfg, p.target_params, p.search_tolerance, p.search_top_k,
                                     p.search_max_width_pruning, p.search_max_depth_pruning, p.search_hidden_divisor,
                                     p.search_ffn_divisor, p.search_prune_heads, cfg.tensor_model_parallel_size)
        if not cands:
            raise ConfigError(f"prune.target_params={p.target_params}: no candidate shape within "
                              f"prune.search_tolerance={p.search_tolerance} of the budget; widen the search")

        def evaluate(c):
            drop = select_drop(per_layer_method, L, c.num_layers, scores.layer_cosine, scores.layer_loss)
            plan = make_plan(cfg, scores, c.ffn_hidden_size, c.num_attention_heads, c.num_query_groups,
                             c.hidden_size, drop)
            pruned, _ = _build_pruned(full_cfg, state, plan)
            return cal.eval_loss(pruned, val, local, mbs), drop

        results = _spread(cands, evaluate, ctx1.world_size, ctx1.rank, "budget search")
        ranking = sorted(({**c.to_dict(), "val_loss": r[0], "dropped_layers": r[1]} for c, r in zip(cands, results)),
                         key=lambda d: (d["val_loss"], -d["params"]))
        best = ranking[0]
        targets = dict(ffn=best["ffn_hidden_size"], heads=best["num_attention_heads"],
                       groups=best["num_query_groups"], hidden=best["hidden_size"])
        drop = best["dropped_layers"]
    else:
        targets = dict(ffn=p.ffn_hidden_size, heads=p.num_attention_heads, groups=p.num_query_groups,
                       hidden=p.hidden_size)
        if p.drop_layers:
            drop = sorted(p.drop_layers)
        elif depth_needed:
            drop = select_drop(p.depth_method, L, p.num_layers, scores.layer_cosine, scores.layer_loss,
                               scores.block_loss.get(L - p.num_layers))
        else:
            drop = []
    plan = make_plan(cfg, scores, drop=drop, **targets)
    pruned, new_cfg = _build_pruned(full_cfg, state, plan)
    model = state = None  # free the full copy before validation and saving
    loss_after = cal.eval_loss(pruned, val, local, mbs) if val is not None else None
    summary = {"original": cfg.arch_dict(), "dropped_layers": drop, "val_loss_before": loss_before,
               "val_loss_after": loss_after}
    save_checkpoint(pruned, new_cfg.replace(name=f"{cfg.name}-pruned"), out, overwrite=job.export.overwrite,
                    tokenizer_dir=tok_dir, extra_metadata={"pruning": summary})
    report = _report(cfg, new_cfg, p, plan, drop, scores, loss_before, loss_after, val, ranking, calib_seconds,
                     time.perf_counter() - t0)
    if dist.get_rank() == 0:
        write_json_atomic(out / REPORT_FILE, report)
        if p.plot and scores is not None:
            plot_layers(out / PLOT_FILE, scores, drop)
    dist.barrier()
    log.info("pruned %s: %d → %d parameters; val loss %s → %s; report %s", cfg.name, report["params"]["original"]
             ["num_parameters"], report["params"]["pruned"]["num_parameters"], loss_before, loss_after,
             out / REPORT_FILE)
    return report


def _dropped(n: int, kept: list[int]) -> list[int]:
    keep = set(kept)
    return [i for i in range(n) if i not in keep]


def _report(cfg, new_cfg, p, plan, drop, scores, loss_before, loss_after, val, ranking, calib_seconds, seconds):
    kept = plan.to_dict()
    dropped = {
        "hidden": None if plan.hidden is None else _dropped(cfg.hidden_size, plan.hidden),
        "ffn": {str(k + 1): _dropped(cfg.ffn_hidden_size, v) for k, v in sorted(plan.ffn.items())},
        "query_groups": {str(k + 1): _dropped(cfg.query_groups, v) for k, v in sorted(plan.groups.items())},
        "heads": {str(k + 1): _dropped(cfg.num_attention_heads, v) for k, v in sorted(plan.heads.items())},
        "layers": drop,
    }
    ppl = cal.perplexity
    return {
        "original_config": cfg.arch_dict() | {"name": cfg.name},
        "pruned_config": new_cfg.arch_dict(),
        "params": {"original": count_parameters(cfg).to_dict(), "pruned": count_parameters(new_cfg).to_dict()},
        "targets": {k: getattr(p, k) for k in ("ffn_hidden_size", "num_attention_heads", "num_query_groups",
                                                "hidden_size", "num_layers", "drop_layers", "target_params")},
        "kept": kept,
        "dropped": dropped,
        "scores": scores_section(scores),
        "validation": {
            "num_samples": 0 if val is None else len(val),
            "seq_length": None if val is None else int(val.tokens.shape[1]),
            "loss_before": loss_before, "perplexity_before": None if loss_before is None else ppl(loss_before),
            "loss_after": loss_after, "perplexity_after": None if loss_after is None else ppl(loss_after),
        },
        "search": ranking,
        "importance": {"seq_aggregation": p.seq_aggregation, "batch_aggregation": p.batch_aggregation,
                       "mask_padding": p.mask_padding, "depth_method": p.depth_method,
                       "num_calib_size": p.num_calib_size, "calib_seq_length": p.calib_seq_length,
                       "calib_data": p.calib_data, "val_data": p.val_data},
        "layout": {"tensor_model_parallel_size": cfg.tensor_model_parallel_size,
                   "pipeline_model_parallel_size": cfg.pipeline_model_parallel_size,
                   "world_size": dist.get_world_size()},
        "timing_seconds": {"calibration": calib_seconds, "total": seconds},
    }
