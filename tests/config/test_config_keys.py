"""Every key that reaches a schema is checked, also keys added with Hydra's ``+key=value``."""

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from nemo_minitron.config.keys import suggestion, unknown_keys
from nemo_minitron.config.model import ConfigError, arch_fields
from nemo_minitron.config.store import register_configs, to_object
from nemo_minitron.paths import conf_dir
from tests.launch import REPO

register_configs()

PRUNE = ["model.restore_from_path=/ckpt", "export.save_path=/out"]
DISTILL = ["model.restore_from_path=/student", "model.kd_teacher_restore_from_path=/teacher"]


def _compose(name, overrides):
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        return compose(config_name=name, overrides=overrides)


def _error(name, overrides) -> str:
    with pytest.raises(ConfigError) as e:
        to_object(_compose(name, overrides))
    return str(e.value)


@pytest.mark.parametrize("name,base,key,hint", [
    ("megatron_prune", PRUNE, "prune.ffn_hiden_size", "prune.ffn_hidden_size"),
    ("megatron_prune", PRUNE, "prune.num_layer", "prune.num_layers"),
    ("megatron_prune", PRUNE, "export.savepath", "export.save_path"),
    ("megatron_distill", DISTILL, "kd.temprature", "kd.temperature"),
    ("megatron_distill", DISTILL, "model.optim.sched.min_lrr", "model.optim.sched.min_lr"),
    ("megatron_finetune", DISTILL, "trainer.max_step", "trainer.max_steps"),
    ("convert_checkpoint", ["input_path=/a", "output_path=/b"], "overwrit", "overwrite"),
    ("model_info", [], "model.hiden_size", "model.hidden_size"),
    ("prepare_wikitext", ["input=/a", "tokenizer=/t", "output_prefix=/o"], "worker", "workers"),
    ("minitron_demo", [], "prune.ffn_hidden", "prune.ffn_hidden_size"),
    ("megatron_distill", DISTILL, "data.seq_len", "data.seq_length"),
])
def test_plus_key_typo_is_refused_with_did_you_mean(name, base, key, hint):
    msg = _error(name, base + [f"+{key}=64"])
    assert f"{key}: unknown key; did you mean {hint}?" in msg


def test_every_unknown_key_is_listed_once():
    msg = _error("megatron_prune", PRUNE + ["+prune.ffn_hiden_size=64", "+foo.bar=1", "+num_layers=3"])
    assert "3 unknown keys" in msg
    assert "foo: unknown key\n" in msg + "\n" and "num_layers: unknown key; did you mean prune.num_layers?" in msg


@pytest.mark.parametrize("key", ["hidden_size", "num_layers", "ffn_hidden_size", "vocab_size", "normalization"])
def test_prune_model_block_refuses_architecture_keys(key):
    msg = _error("megatron_prune", PRUNE + [f"+model.{key}=1"])
    assert f"model.{key}: the architecture is read from the checkpoint" in msg
    if key in ("hidden_size", "num_layers", "ffn_hidden_size"):
        assert f"the pruning target is prune.{key}" in msg


@pytest.mark.parametrize("name", ["megatron_distill", "megatron_finetune"])
def test_train_model_block_refuses_architecture_keys_and_model_precision(name):
    assert "model.hidden_size: the student's architecture is read from its checkpoint" in _error(
        name, DISTILL + ["+model.hidden_size=128"])
    assert "model.precision: the parameter dtype of training is trainer.precision" in _error(
        name, DISTILL + ["+model.precision=bf16"])


def test_plain_override_of_an_architecture_key_is_refused_by_the_schema():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="hidden_size"):
        _compose("megatron_prune", PRUNE + ["model.hidden_size=128"])


def test_valid_configs_have_no_unknown_keys():
    for name, base in (("megatron_prune", PRUNE), ("megatron_distill", DISTILL), ("megatron_finetune", DISTILL),
                       ("model_info", []), ("minitron_demo", [])):
        cfg = _compose(name, base)
        assert unknown_keys(cfg) == []
        to_object(cfg)


def test_the_runtime_block_has_every_runtime_field():
    """A runtime field added to ModelConfig (RUNTIME_FIELDS) must also be settable in the runtime blocks."""
    import dataclasses

    from nemo_minitron.config.model import RUNTIME_FIELDS, LayoutConfig, RuntimeModelConfig
    from nemo_minitron.config.train import TrainModelConfig

    prune_fields = {f.name for f in dataclasses.fields(RuntimeModelConfig)}
    assert set(RUNTIME_FIELDS) <= prune_fields
    assert not prune_fields & set(arch_fields())
    train_fields = {f.name for f in dataclasses.fields(TrainModelConfig)}
    assert {f.name for f in dataclasses.fields(LayoutConfig)} <= train_fields
    assert not train_fields & (set(arch_fields()) | {"precision"})


def test_suggestion_prefers_the_same_level_then_the_same_name():
    valid = ["prune", "prune.num_layers", "prune.hidden_size", "model", "model.seed"]
    assert suggestion("prune.num_layrs", valid) == "prune.num_layers"
    assert suggestion("model.num_layers", valid) == "prune.num_layers"
    assert suggestion("zzz.qqq", valid) is None


def test_entry_point_exits_nonzero_naming_the_key(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "examples" / "model_info.py"), "+model.hiden_size=3"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode != 0
    assert "model.hiden_size: unknown key; did you mean model.hidden_size?" in p.stderr + p.stdout
