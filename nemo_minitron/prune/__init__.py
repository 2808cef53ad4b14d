"""Minitron structured pruning on megatron-core GPT models (arXiv 2407.14679, 2408.11796).

Pure math lives in :mod:`.importance` (aggregation) and :mod:`.ranking` (kept index sets); megatron
hooks in :mod:`.hooks`; weight slicing in :mod:`.surgery`; layer selection in :mod:`.depth`; the budget
search in :mod:`.search`; target checks in :mod:`.validate`; the recipe in :mod:`.pipeline`.
"""

from nemo_minitron.prune.importance import AGGREGATORS, aggregate, finalize, seq_aggregate
from nemo_minitron.prune.surgery import PrunePlan, prune_state_dict, pruned_config
from nemo_minitron.prune.validate import validate_targets

__all__ = ["AGGREGATORS", "PrunePlan", "aggregate", "finalize", "prune_state_dict", "pruned_config",
           "run_prune", "seq_aggregate", "validate_targets"]


def run_prune(job):
    """Run a pruning job (see :func:`nemo_minitron.prune.pipeline.run_prune`)."""
    from nemo_minitron.prune.pipeline import run_prune as _run

    return _run(job)
