"""The megatron name table against megatron-core's own names, the norm formula, and conversion of TE-named models.

Transformer Engine cannot be instantiated on CPU, so TE names come from megatron-core itself: the
local layer spec's ``sharded_state_dict_keys_map`` (how megatron renames the local norms to TE's fused
names), and megatron's own ``sharded_state_dict`` machinery for ``_extra_state`` objects.
"""

from __future__ import annotations

import pytest
import torch

from nemo_minitron.models import names
from tests.workers.interop_common import TOKENS, hf_logits, make_hf_model

pytestmark = pytest.mark.compat  # megatron-core's own names differ between releases: checked on every stack

ARCH_VARIANTS = {
    "llama": dict(),
    "layernorm_bias_qknorm": dict(normalization="LayerNorm", add_bias_linear=True, qk_layernorm=True),
    "qkv_bias": dict(add_qkv_bias=True),
}


def megatron_keys_map() -> dict[str, str]:
    """megatron-core's local→TE renaming of layer keys (prefix → prefix)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return dict(get_gpt_layer_local_spec().submodules.sharded_state_dict_keys_map)


def te_named(state: dict) -> dict:
    """A local model's state dict renamed to TE names with megatron-core's own keys map, plus the TE-only
    ``core_attention._extra_state`` entries (same tensors: filling it fills the model)."""
    kmap = megatron_keys_map()
    out = {}
    for key, value in state.items():
        split = names.split_layer_key(key)
        if split is not None:
            i, rest = split
            for src, dst in kmap.items():
                if rest.startswith(src):
                    rest = dst + rest[len(src):]
                    break
            key = f"{names.LAYER_PREFIX}{i}.{rest}"
            if rest.startswith("self_attention.linear_qkv.weight"):
                out[f"{names.LAYER_PREFIX}{i}.self_attention.core_attention._extra_state"] = None
        out[key] = value
    return out


def test_table_matches_megatron_keys_map():
    kmap = megatron_keys_map()
    fused = [t for t in names.LAYER_TENSORS if t.local != t.te]
    assert {t.role for t in fused} == {"attn_norm.weight", "attn_norm.bias", "mlp_norm.weight", "mlp_norm.bias"}
    for t in fused:
        (src,) = [s for s in kmap if t.local.startswith(s)]
        assert kmap[src] + t.local[len(src):] == t.te
    assert names.to_te("decoder.layers.3.input_layernorm.weight") == "decoder.layers.3.self_attention.linear_qkv.layer_norm_weight"
    assert names.to_local("decoder.layers.mlp.linear_fc1.layer_norm_bias") == "decoder.layers.pre_mlp_layernorm.bias"
    assert names.alternative("decoder.final_layernorm.weight") == "decoder.final_layernorm.weight"
    assert names.to_spec("mlp.linear_fc1.weight", names.TRANSFORMER_ENGINE) == "mlp.linear_fc1.weight"
    with pytest.raises(ValueError, match="layer spec"):
        names.to_spec("x", "apex")


@pytest.mark.parametrize("variant", sorted(ARCH_VARIANTS))
def test_table_covers_built_models(world, tiny_cfg, variant):
    """Every tensor of a real megatron-core layer is in the table, and megatron saves it under the TE name."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    from nemo_minitron.models.builder import build_gpt_model

    flags = ARCH_VARIANTS[variant]
    model = build_gpt_model(tiny_cfg.replace(num_layers=2, **flags))
    built = {names.split_layer_key(k)[1] for k in model.state_dict()
             if names.split_layer_key(k) and names.is_weight_key(k)}
    assert built == set(names.layer_tensor_names(names.LOCAL, **flags))
    extra = {names.split_layer_key(k)[1][: -len(".") - len(names.EXTRA_STATE)]
             for k in model.state_dict() if names.split_layer_key(k) and names.is_extra_state(k)}
    assert extra == set(names.EXTRA_STATE_MODULES[names.LOCAL])
    # megatron's sharded (checkpoint) keys are the TE spelling of the in-memory names
    for name, sh in model.sharded_state_dict(prefix="").items():
        if isinstance(sh, ShardedObject) or names.split_layer_key(name) is None:
            continue
        assert sh.key == names.LAYER_PREFIX + names.to_te(names.split_layer_key(name)[1]), name


def test_norm_formula_matches_torch_norms():
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 2, 16), 1 + 0.3 * torch.randn(16), 0.1 * torch.randn(16)
    rms = torch.nn.RMSNorm(16, eps=1e-5)
    ln = torch.nn.LayerNorm(16, eps=1e-5)
    with torch.no_grad():
        rms.weight.copy_(w)
        ln.weight.copy_(w)
        ln.bias.copy_(b)
    torch.testing.assert_close(names.apply_norm(x, w, None, "RMSNorm", 1e-5), rms(x))
    torch.testing.assert_close(names.apply_norm(x, w, b, "LayerNorm", 1e-5), ln(x))
    # zero-centred gamma stores gamma - 1
    torch.testing.assert_close(names.apply_norm(x, w - 1, b, "LayerNorm", 1e-5, zero_centered_gamma=True), ln(x))
    with pytest.raises(ValueError, match="normalization"):
        names.apply_norm(x, w, None, "ScaleNorm", 1e-5)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_hf_conversion_through_te_names(world, tmp_path, kind):
    """Issue 9 found 2: a TE-named model (fused norms, extra core-attention state) imports and exports HF exactly."""
    from safetensors.torch import load_file

    from nemo_minitron.interop.hf import model_config_from_hf, read_hf_config
    from nemo_minitron.interop.megatron_io import (
        build_model_for_conversion,
        canonical_tensors,
        fill_state_from_hf,
        iter_hf_from_state,
    )
    from nemo_minitron.interop.safetensors_io import HFWeights
    from nemo_minitron.models.forward import forward_logits

    src = make_hf_model(kind, tmp_path / "hf")
    cfg, _ = model_config_from_hf(read_hf_config(tmp_path / "hf"))
    model = build_model_for_conversion(cfg, 1, 1)
    state = te_named(model.state_dict(keep_vars=True))
    assert any(k.endswith("linear_qkv.layer_norm_weight") for k in state)
    assert not any(k.endswith("input_layernorm.weight") for k in state)
    assert set(canonical_tensors(state)) == set(canonical_tensors(model.state_dict()))
    source = HFWeights(tmp_path / "hf")
    n = fill_state_from_hf(state, cfg, source, layers=list(range(cfg.num_layers)))
    source.close()
    assert n == sum(p.numel() for p in model.parameters())
    assert (forward_logits(model, TOKENS) - hf_logits(src)).abs().max().item() < 1e-5
    exported = dict(iter_hf_from_state(state, cfg))
    ref = load_file(tmp_path / "hf" / "model.safetensors")
    assert set(exported) == set(ref) - ({"lm_head.weight"} if cfg.share_embeddings_and_output_weights else set())
    assert all(torch.equal(exported[k], ref[k]) for k in exported)


def test_convert_refuses_unknown_transformer_impl(tmp_path):
    from nemo_minitron.config.model import ConfigError
    from nemo_minitron.interop.convert import convert

    with pytest.raises(ConfigError, match="model.transformer_impl"):
        convert(tmp_path / "in", "hf", tmp_path / "out", "megatron", transformer_impl="apex")


def test_convert_schema_has_transformer_impl():
    from nemo_minitron.config.interop import ConvertConfig, ConvertModelConfig
    from nemo_minitron.config.model import ConfigError

    job = ConvertConfig(input_path="a", output_path="b", model=ConvertModelConfig(transformer_impl="local"))
    assert job.validate().model.transformer_impl == "local"
    job.model.transformer_impl = "te"
    with pytest.raises(ConfigError, match="model.transformer_impl"):
        job.validate()
