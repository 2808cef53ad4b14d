"""The checks several settings share: positive integers and whether a model divides over a TP × PP layout.

:func:`layout_problems` is the one statement of "this architecture shards evenly over ``tp`` × ``pp``":
model validation, the teacher check of distillation, the choice between sharded and replicated prune
surgery and the prune memory planner read it.
"""

from __future__ import annotations

from typing import Any

from nemo_minitron.config.model import ConfigError

#: Architecture fields split over tensor-parallel ranks (``num_query_groups`` resolves null to MHA).
TP_SPLIT_FIELDS = ("num_attention_heads", "num_query_groups", "ffn_hidden_size", "vocab_size")


def positive_int(key: str, value: Any) -> int:
    """``value`` if it is a positive integer (not a bool), else :class:`ConfigError` naming ``key``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    return value


def layout_problems(cfg, tp: int, pp: int, prefix: str = "model", layout_prefix: str = "model") -> list[str]:
    """Why ``cfg`` (a :class:`~nemo_minitron.config.model.ModelConfig`) does not divide over ``tp`` × ``pp``.

    One message per offending field, naming ``{prefix}.<field>`` and
    ``{layout_prefix}.tensor_model_parallel_size`` / ``pipeline_model_parallel_size``; empty when it shards evenly.
    """
    problems = []
    for key in TP_SPLIT_FIELDS:
        value = cfg.query_groups if key == "num_query_groups" else getattr(cfg, key)
        if value % tp:
            problems.append(f"{prefix}.{key}={value} is not divisible by {layout_prefix}.tensor_model_parallel_size={tp}")
    if cfg.num_layers % pp:
        problems.append(f"{prefix}.num_layers={cfg.num_layers} is not divisible by "
                        f"{layout_prefix}.pipeline_model_parallel_size={pp}")
    return problems


def shards_evenly(cfg, tp: int, pp: int) -> bool:
    """Whether ``cfg``'s layers, heads, KV groups, MLP neurons and vocabulary divide over ``tp`` × ``pp``."""
    return not layout_problems(cfg, tp, pp)
