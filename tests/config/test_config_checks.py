"""The shared checks: one statement of TP × PP divisibility read by model validation, the teacher check,
sharded prune surgery and the prune memory planner; one positive-integer check."""

import pytest

from nemo_minitron.config.checks import layout_problems, positive_int, shards_evenly
from nemo_minitron.config.model import ConfigError
from tests.tiny import tiny


def _brute_force_fits(cfg, tp, pp) -> bool:
    """Independent statement: every TP-split size and the layer count split into equal integer parts."""
    sizes = [cfg.num_attention_heads, cfg.query_groups, cfg.ffn_hidden_size, cfg.vocab_size]
    return all(any(k * tp == s for k in range(1, s + 1)) for s in sizes) and any(
        k * pp == cfg.num_layers for k in range(1, cfg.num_layers + 1))


@pytest.mark.parametrize("tp", [1, 2, 3, 4])
@pytest.mark.parametrize("pp", [1, 2, 3])
@pytest.mark.parametrize("arch", [{}, dict(num_layers=3), dict(ffn_hidden_size=96), dict(num_query_groups=2),
                                  dict(num_attention_heads=6, num_query_groups=3, hidden_size=48)])
def test_layout_problems_agrees_with_a_brute_force_split(tp, pp, arch):
    cfg = tiny(**arch)
    assert shards_evenly(cfg, tp, pp) is _brute_force_fits(cfg, tp, pp)
    assert bool(layout_problems(cfg, tp, pp)) is not shards_evenly(cfg, tp, pp)


def test_every_reader_uses_the_one_check():
    from nemo_minitron.distill.teacher import check_teacher_compatible
    from nemo_minitron.plan import memory
    from nemo_minitron.prune import pipeline

    assert memory.shards_evenly is shards_evenly and pipeline.shards_evenly is shards_evenly
    student = tiny(pipeline_model_parallel_size=2)
    with pytest.raises(ConfigError, match=r"teacher.num_layers=3 is not divisible by model.pipeline_model_parallel_size"
                                          r"=2: the teacher is split"):
        check_teacher_compatible(student, tiny(num_layers=3))
    with pytest.raises(ConfigError, match=r"model.num_query_groups=4 is not divisible by "
                                          r"model.tensor_model_parallel_size=8"):
        tiny(num_attention_heads=8, num_query_groups=4, tensor_model_parallel_size=8, vocab_size=256).validate()


def test_positive_int_names_the_key():
    assert positive_int("prune.x", 3) == 3
    for bad in (0, -1, True, 2.0, "3"):
        with pytest.raises(ConfigError, match=r"prune.x=.* must be a positive integer"):
            positive_int("prune.x", bad)
