"""ModelConfig validation, presets and the analytic parameter count."""

import json
import subprocess
import sys

import pytest
import yaml

from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.models.params import count_parameters
from tests.launch import REPO

# Published totals (model cards / safetensors headers); Minitron paper §5.3 formula reproduces them.
PUBLISHED = {
    "llama3.1-8b": 8_030_261_248,
    "llama3.2-1b": 1_235_814_400,
    "llama3.2-3b": 3_212_749_824,
    "mistral-nemo-12b": 12_247_782_400,
    "qwen2.5-7b": 7_615_616_512,
    "qwen3-8b": 8_190_735_360,
    "smollm2-135m": 134_515_008,
}


def _preset(name: str) -> ModelConfig:
    return ModelConfig.from_dict(yaml.safe_load((REPO / "conf" / "model" / f"{name}.yaml").read_text()))


@pytest.mark.parametrize("name,expected", sorted(PUBLISHED.items()))
def test_preset_parameter_counts_match_published(name, expected):
    cfg = _preset(name).validate()
    assert count_parameters(cfg).total == expected


def test_mistral_nemo_head_dim_is_explicit():
    cfg = _preset("mistral-nemo-12b")
    assert cfg.head_dim == 128 and cfg.hidden_size // cfg.num_attention_heads == 160


def test_llama31_8b_breakdown():
    counts = count_parameters(_preset("llama3.1-8b"))
    assert counts.embedding == 2 * 128256 * 4096
    assert counts.non_embedding == counts.total - counts.embedding


@pytest.mark.parametrize(
    "changes,key",
    [
        (dict(num_attention_heads=8, num_query_groups=3), "model.num_query_groups=3"),
        (dict(hidden_size=60, num_attention_heads=8), "set model.kv_channels"),
        (dict(tensor_model_parallel_size=3), "not divisible by model.tensor_model_parallel_size=3"),
        (dict(pipeline_model_parallel_size=3), "model.num_layers=4 is not divisible by model.pipeline_model_parallel_size=3"),
        (dict(normalization="BatchNorm"), "model.normalization='BatchNorm'"),
        (dict(activation="tanh"), "model.activation='tanh'"),
        (dict(num_layers=0), "model.num_layers=0"),
        (dict(precision="fp8"), "model.precision='fp8'"),
        (dict(ffn_hidden_size=130, tensor_model_parallel_size=4), "model.ffn_hidden_size=130 is not divisible"),
    ],
)
def test_validation_names_the_key(tiny_cfg, changes, key):
    with pytest.raises(ConfigError, match=key.replace("(", r"\(").replace(".", r"\.").replace("[", r"\[")):
        tiny_cfg.replace(**changes).validate()


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="hidden_szie"):
        ModelConfig.from_dict({"hidden_szie": 3})


def test_arch_dict_excludes_runtime_fields(tiny_cfg):
    a = tiny_cfg.replace(tensor_model_parallel_size=2, precision="bf16").arch_dict()
    assert "tensor_model_parallel_size" not in a and "precision" not in a
    assert tiny_cfg.arch_diff(tiny_cfg.replace(pipeline_model_parallel_size=2)) == {}
    assert tiny_cfg.arch_diff(tiny_cfg.replace(hidden_size=32)) == {"hidden_size": (64, 32)}


def test_model_info_cli_json():
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "model_info.py"), "model=qwen3-8b", "output=json"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["num_parameters"] == PUBLISHED["qwen3-8b"]
    assert data["model"]["qk_layernorm"] is True


def test_model_info_cli_rejects_unknown_key():
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "model_info.py"), "model=tiny", "model.hiden_size=3"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode != 0 and "hiden_size" in out.stderr


def test_import_is_light():
    code = "import sys, nemo_minitron; print(any(m.startswith('megatron') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False"


def test_layout_block_carries_performance_keys():
    """NeMo's model.sequence_parallel / activations_checkpoint_* keys reach the ModelConfig the builder reads."""
    from nemo_minitron.config.model import LayoutConfig, apply_layout

    block = LayoutConfig(tensor_model_parallel_size=2, sequence_parallel=True,
                         activations_checkpoint_granularity="full", activations_checkpoint_method="block",
                         activations_checkpoint_num_layers=2, fusions=False)
    cfg = apply_layout(block, ModelConfig(num_layers=2))
    assert (cfg.tensor_model_parallel_size, cfg.sequence_parallel, cfg.activations_checkpoint_granularity,
            cfg.activations_checkpoint_method, cfg.activations_checkpoint_num_layers, cfg.fusions) == (
        2, True, "full", "block", 2, False)
    assert cfg.arch_dict() == ModelConfig(num_layers=2).arch_dict()  # runtime keys, not architecture
