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


def test_every_accepted_activation_dispatches_to_its_function():
    """Each ``model.activation`` the config accepts builds the function megatron-core applies (dense reference)."""
    import torch
    import torch.nn.functional as F

    from nemo_minitron.config import model as model_cfg
    from nemo_minitron.models import names
    from tests.tiny import tiny

    x = torch.linspace(-3, 3, 13)
    ref = {"silu": F.silu(x), "gelu": F.gelu(x), "relu": F.relu(x), "squared_relu": F.relu(x) ** 2}
    assert model_cfg.ACTIVATIONS is names.ACTIVATIONS
    assert set(names.ACTIVATIONS) == set(ref)
    for name in names.ACTIVATIONS:
        tiny(activation=name).validate()  # accepted by the config
        torch.testing.assert_close(names.activation_function(name)(x), ref[name], msg=name)
    with pytest.raises(ConfigError, match="model.activation='swish' must be one of"):
        tiny(activation="swish").validate()


def test_every_accepted_kd_choice_dispatches():
    """``kd.intermediate_loss`` and ``kd.loss`` names the config accepts are the ones the losses dispatch on."""
    import torch

    from nemo_minitron.config.train import TrainConfig
    from nemo_minitron.distill.losses import HIDDEN_STATE_LOSSES, hidden_state_loss
    from nemo_minitron.distill.objective import LOSSES, TrainingLoss, resolve_loss

    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    ref = {"cosine": torch.tensor([1.0]), "mse": torch.tensor([2.5])}  # 1 - cos 90°, ((1-0)^2 + (0-2)^2) / 2
    assert set(HIDDEN_STATE_LOSSES) == set(ref)
    for kind in HIDDEN_STATE_LOSSES:
        torch.testing.assert_close(hidden_state_loss(s, t, kind), ref[kind], msg=kind)
    cfg = TrainConfig(mode="finetune")
    cfg.model.restore_from_path = "student"
    cfg.kd.intermediate_loss = "l1"
    with pytest.raises(ConfigError, match=r"kd.intermediate_loss='l1' must be one of \['cosine', 'mse'\]"):
        cfg.validate(1)
    for name, cls in LOSSES.items():
        assert resolve_loss(name) is cls and issubclass(cls, TrainingLoss)
