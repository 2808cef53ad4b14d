"""Which NeMo model class our NeMo 2 writer names (``nemo_family``), without NeMo: the class must compute the
checkpoint's network, Mistral's config is written with full attention and fp32 parameters."""

import json
import subprocess
import sys

import pytest

from nemo_minitron.config.model import ConfigError
from nemo_minitron.interop.fiddle_json import read_fiddle_json
from nemo_minitron.interop.nemo2 import io_json_from_config, model_yaml_from_config, nemo_family_of, nemo_family_problem
from tests.launch import REPO
from tests.tiny import tiny


def test_default_family_follows_the_architecture():
    assert nemo_family_of(tiny()) == "llama"
    assert nemo_family_of(tiny(add_qkv_bias=True)) == "qwen2"
    assert nemo_family_of(tiny(qk_layernorm=True)) == "qwen3"
    assert model_yaml_from_config(tiny(add_qkv_bias=True))["_target_"].endswith("qwen2.Qwen2Model")
    assert model_yaml_from_config(tiny(rope_scaling=True))["config"]["_target_"].endswith("llama.Llama31Config")


@pytest.mark.parametrize("cfg, family, words", [
    (tiny(add_qkv_bias=True), "llama", "QKV bias"),
    (tiny(), "qwen3", "neither QKV bias nor QK layer norm"),
    (tiny(qk_layernorm=True), "qwen2", "QK layer norm"),
    (tiny(rope_scaling=True), "mistral", "RoPE scaling"),
])
def test_a_family_that_cannot_compute_the_checkpoint_is_refused(cfg, family, words):
    assert words in nemo_family_problem(cfg, family)
    with pytest.raises(ConfigError, match=f"^nemo_family={family}: .*{words}.*; use nemo_family="):
        model_yaml_from_config(cfg, family)


def test_mistral_is_written_with_full_attention_and_fp32_parameters():
    spec = model_yaml_from_config(tiny(), "mistral")
    assert spec["_target_"].endswith("mistral.MistralModel") and spec["config"]["window_size"] is None
    assert nemo_family_problem(tiny(), "mistral") is None
    ctx = read_fiddle_json(json.loads(io_json_from_config(tiny(), family="mistral")))
    conf = ctx["model"]["config"]
    assert conf["_target_"] == "nemo.collections.llm.gpt.model.mistral.MistralConfig7B"
    assert conf["window_size"] is None and conf["params_dtype"] == "torch.float32"
    assert "params_dtype" not in read_fiddle_json(json.loads(io_json_from_config(tiny())))["model"]["config"]


def test_the_plugin_package_does_not_import_nemo():
    code = ("import sys, nemo_minitron.nemo_plugin as p; p.compose; "
            "assert not any(m == 'nemo' or m.startswith(('nemo.', 'nemo_run')) for m in sys.modules), sorted(sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
