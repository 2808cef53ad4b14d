"""Up-front validation of pruning targets: every error names the offending key.

Runs before any model is built or any data is read, from the checkpoint's architecture and the
requested layout only.
"""

from __future__ import annotations

from nemo_minitron.config.checks import positive_int
from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.config.prune import PruneConfig
from nemo_minitron.models.params import count_parameters
from nemo_minitron.prune.depth import DEPTH_METHODS
from nemo_minitron.prune.importance import AGGREGATORS

WIDTH_TARGETS = ("ffn_hidden_size", "num_attention_heads", "num_query_groups", "hidden_size")


def _positive_int(key: str, value) -> int:
    return positive_int(f"prune.{key}", value)


def validate_targets(p: PruneConfig, model: ModelConfig) -> None:
    """Raise :class:`ConfigError` for the first invalid pruning setting in ``p`` for ``model``."""
    tp = model.tensor_model_parallel_size
    targets = {k: getattr(p, k) for k in (*WIDTH_TARGETS, "num_layers") if getattr(p, k) is not None}
    drop = list(p.drop_layers or [])
    if not targets and not drop and p.target_params is None:
        raise ConfigError("nothing to prune: set at least one of prune.ffn_hidden_size, prune.num_attention_heads, "
                          "prune.num_query_groups, prune.hidden_size, prune.num_layers, prune.drop_layers or "
                          "prune.target_params")
    if drop and (targets or p.target_params is not None):
        other = sorted(targets) + (["target_params"] if p.target_params is not None else [])
        raise ConfigError(f"prune.drop_layers is exclusive with the other targets; unset prune.{other[0]}")
    if p.target_params is not None and targets:
        raise ConfigError(f"prune.target_params is exclusive with explicit targets; unset prune.{sorted(targets)[0]}")
    original = {"ffn_hidden_size": model.ffn_hidden_size, "num_attention_heads": model.num_attention_heads,
                "num_query_groups": model.query_groups, "hidden_size": model.hidden_size,
                "num_layers": model.num_layers}
    for key, value in targets.items():
        _positive_int(key, value)
        orig_key = "num_query_groups" if key == "num_query_groups" else key
        if value > original[key]:
            raise ConfigError(f"prune.{key}={value} is larger than the original model.{orig_key}={original[key]}")
    for key in ("ffn_hidden_size", "num_attention_heads", "num_query_groups"):
        if key in targets and targets[key] % tp:
            raise ConfigError(f"prune.{key}={targets[key]} is not divisible by model.tensor_model_parallel_size={tp}")
    if "num_attention_heads" in targets or "num_query_groups" in targets:
        groups = targets.get("num_query_groups", model.query_groups)
        hpg = model.num_attention_heads // model.query_groups
        heads = targets.get("num_attention_heads", groups * hpg)
        where = "prune.num_query_groups" if "num_query_groups" in targets else "model.num_query_groups"
        if heads % groups:
            raise ConfigError(f"prune.num_attention_heads={heads} is not a multiple of {where}={groups}")
        if heads // groups > hpg:
            raise ConfigError(f"prune.num_attention_heads={heads} keeps {heads // groups} heads per group but the "
                              f"model has only {hpg} per group (model.num_attention_heads={model.num_attention_heads}, "
                              f"model.num_query_groups={model.query_groups})")
        if heads % tp:
            raise ConfigError(f"prune.num_attention_heads={heads} is not divisible by "
                              f"model.tensor_model_parallel_size={tp}")
    if drop:
        for i, layer in enumerate(drop):
            if not isinstance(layer, int) or isinstance(layer, bool):
                raise ConfigError(f"prune.drop_layers[{i}]={layer!r} must be an integer (1-indexed layer number)")
            if not 1 <= layer <= model.num_layers:
                raise ConfigError(f"prune.drop_layers[{i}]={layer} is out of range: layers are numbered 1.."
                                  f"{model.num_layers} (model.num_layers={model.num_layers})")
        if len(set(drop)) != len(drop):
            raise ConfigError(f"prune.drop_layers={drop} lists a layer twice")
        if len(drop) >= model.num_layers:
            raise ConfigError(f"prune.drop_layers={drop} would remove every layer")
    if p.target_params is not None:
        _positive_int("target_params", p.target_params)
        total = count_parameters(model).total
        if p.target_params >= total:
            raise ConfigError(f"prune.target_params={p.target_params} is not below the original {total} parameters")
        if not 0 < p.search_tolerance < 1:
            raise ConfigError(f"prune.search_tolerance={p.search_tolerance} must be in (0, 1)")
        _positive_int("search_top_k", p.search_top_k)
        for key in ("search_max_width_pruning", "search_max_depth_pruning"):
            if not 0 <= getattr(p, key) < 1:
                raise ConfigError(f"prune.{key}={getattr(p, key)} must be in [0, 1)")
        for key in ("search_hidden_divisor", "search_ffn_divisor"):
            _positive_int(key, getattr(p, key))
    for key in ("seq_aggregation", "batch_aggregation"):
        if getattr(p, key) not in AGGREGATORS:
            raise ConfigError(f"prune.{key}={getattr(p, key)!r} must be one of {list(AGGREGATORS)}")
    if p.depth_method not in DEPTH_METHODS:
        raise ConfigError(f"prune.depth_method={p.depth_method!r} must be one of {list(DEPTH_METHODS)}")
    needs_calibration = not drop
    if needs_calibration:
        for key in ("num_calib_size", "calib_batch_size", "num_val_samples"):
            _positive_int(key, getattr(p, key))
        _positive_int("calib_seq_length", p.calib_seq_length)
        if p.calib_seq_length < 2:
            raise ConfigError(f"prune.calib_seq_length={p.calib_seq_length} must be at least 2")
        if p.calib_seq_length > model.max_position_embeddings:
            raise ConfigError(f"prune.calib_seq_length={p.calib_seq_length} exceeds "
                              f"model.max_position_embeddings={model.max_position_embeddings}")
        if not p.calib_data and not p.importance_cache:
            raise ConfigError("prune.calib_data is required (an mmap dataset prefix or a text/JSONL file)")
