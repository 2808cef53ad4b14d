"""TE-fused and local norm names: either spelling loads into the local spec with identical logits; mismatches fail."""

from __future__ import annotations

import pytest
import torch

from nemo_minitron.interop.te_names import (
    UnmatchedKeysError,
    alternative_name,
    checkpoint_tensor_keys,
    load_dist_weights,
    match_state_dict,
    to_fused_name,
    to_local_name,
)

TOKENS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8]])


def _model(cfg, seed):
    from nemo_minitron import runtime
    from nemo_minitron.models.builder import build_gpt_model

    runtime.seed_everything(seed)
    model = build_gpt_model(cfg.replace(seed=seed))
    with torch.no_grad():  # norms away from 1.0 so that a dropped norm changes the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model


def _save(model, path, rename=None, drop=()):
    """Save ``model`` as a dist checkpoint, renaming/dropping tensor keys (no _extra_state objects)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    sd = {}
    for name, sh in model.sharded_state_dict(prefix="").items():
        if isinstance(sh, ShardedObject) and rename is not None:
            continue
        if getattr(sh, "key", None) in drop:
            continue
        if rename is not None and hasattr(sh, "key"):
            sh.key = rename(sh.key)
        sd[name] = sh
    path.mkdir(parents=True)
    dist_checkpointing.save(sd, str(path))
    return path


def test_name_helpers():
    assert to_local_name("decoder.layers.self_attention.linear_qkv.layer_norm_weight") == \
        "decoder.layers.input_layernorm.weight"
    assert to_fused_name("decoder.layers.3.pre_mlp_layernorm.weight") == "decoder.layers.3.mlp.linear_fc1.layer_norm_weight"
    assert alternative_name("decoder.layers.0.mlp.linear_fc1.layer_norm_bias") == "decoder.layers.0.pre_mlp_layernorm.bias"
    assert alternative_name("decoder.final_layernorm.weight") == "decoder.final_layernorm.weight"
    target = ["decoder.layers.0.input_layernorm.weight", "decoder.layers.0.self_attention.linear_qkv.weight"]
    te = {"decoder.layers.0.self_attention.linear_qkv.layer_norm_weight": torch.ones(2),
          "decoder.layers.0.self_attention.linear_qkv.weight": torch.zeros(2),
          "decoder.layers.0.self_attention.linear_qkv._extra_state": None}
    assert sorted(match_state_dict(te, target)) == sorted(target)
    with pytest.raises(UnmatchedKeysError, match="input_layernorm.weight"):
        match_state_dict({"decoder.layers.0.self_attention.linear_qkv.weight": torch.zeros(2)}, target)
    with pytest.raises(UnmatchedKeysError, match="linear_qkv.norm_w"):
        match_state_dict(te | {"decoder.layers.0.self_attention.linear_qkv.norm_w": torch.ones(2)}, target)


def test_te_and_local_named_checkpoints_load_identically(world, tiny_cfg, tmp_path):
    from nemo_minitron.models.forward import forward_logits

    cfg = tiny_cfg.replace(num_layers=2)
    src = _model(cfg, seed=1)
    ref = forward_logits(src, TOKENS)
    te_dir = _save(src, tmp_path / "te")  # megatron-core's own (fused) names, with _extra_state objects
    local_dir = _save(src, tmp_path / "local", rename=to_local_name)
    te_keys, local_keys = checkpoint_tensor_keys(te_dir), checkpoint_tensor_keys(local_dir)
    assert "decoder.layers.self_attention.linear_qkv.layer_norm_weight" in te_keys
    assert "decoder.layers.input_layernorm.weight" in local_keys
    assert "decoder.layers.pre_mlp_layernorm.weight" in local_keys
    assert not any("layer_norm_weight" in k for k in local_keys)

    for d in (te_dir, local_dir):
        fresh = _model(cfg, seed=2)
        assert (forward_logits(fresh, TOKENS) - ref).abs().max() > 1e-2  # really a different model before loading
        load_dist_weights(fresh, d)
        assert torch.equal(forward_logits(fresh, TOKENS), ref), d.name


def test_unmatched_keys_fail_loudly(world, tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(num_layers=2)
    src = _model(cfg, seed=1)
    renamed = _save(src, tmp_path / "renamed", rename=lambda k: k.replace("mlp.linear_fc1.layer_norm_weight",
                                                                          "mlp.linear_fc1.norm_scale"))
    with pytest.raises(UnmatchedKeysError) as err:
        load_dist_weights(_model(cfg, seed=2), renamed)
    assert "decoder.layers.mlp.linear_fc1.layer_norm_weight" in str(err.value)  # model side
    assert "decoder.layers.mlp.linear_fc1.norm_scale" in str(err.value)  # checkpoint side

    # the NeMo importer bug: norms missing from the checkpoint must not stay at 1.0 silently
    dropped = _save(src, tmp_path / "dropped", drop={"decoder.layers.self_attention.linear_qkv.layer_norm_weight"})
    with pytest.raises(UnmatchedKeysError, match="linear_qkv.layer_norm_weight"):
        load_dist_weights(_model(cfg, seed=2), dropped)
