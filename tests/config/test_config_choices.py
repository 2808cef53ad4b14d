"""String choices are defined once, next to the code that dispatches on them, and validation reads them there."""

import pytest

from nemo_minitron.config.model import ConfigError
from nemo_minitron.config.prune import PruneConfig


def test_depth_methods_live_with_the_layer_selector():
    from nemo_minitron.prune import depth, validate

    assert validate.DEPTH_METHODS is depth.DEPTH_METHODS
    cos = {0: 0.3, 1: 0.1, 2: 0.2, 3: 0.9}  # 0-based layers, higher = more important
    assert depth.select_drop("cosine", 4, 3, cos) == [1]
    with pytest.raises(ValueError, match="depth method 'cosin' must be one of"):
        depth.select_drop("cosin", 4, 3, cos)  # used to fall through to the cosine selector


def test_prune_choices_are_validated_against_the_dispatchers():
    from nemo_minitron.prune.importance import AGGREGATORS
    from nemo_minitron.prune.validate import validate_targets
    from tests.tiny import tiny

    with pytest.raises(ConfigError, match=r"prune.depth_method='cosin' must be one of \['block_loss'"):
        validate_targets(PruneConfig(num_layers=3, depth_method="cosin", calib_data="x.pt"), tiny())
    with pytest.raises(ConfigError, match=r"prune.seq_aggregation='max' must be one of " + repr(list(AGGREGATORS))
                       .replace("[", r"\[").replace("]", r"\]")):
        validate_targets(PruneConfig(ffn_hidden_size=64, seq_aggregation="max", calib_data="x.pt"), tiny())


def test_convert_formats_are_the_converters():
    from nemo_minitron.config.interop import ConvertConfig
    from nemo_minitron.interop.convert import INPUT_FORMATS

    with pytest.raises(ConfigError, match=r"input_format='safetensor' must be one of " + repr(list(INPUT_FORMATS))
                       .replace("[", r"\[").replace("]", r"\]")):
        ConvertConfig(input_path="a", output_path="b", input_format="safetensor").validate()
