"""HF→megatron under TP reads only each rank's slice of every tensor (issue 11 deliver 2, import side)."""

from __future__ import annotations

import pytest
import torch

from tests.workers.interop_common import make_hf_model


def test_get_slice_matches_full_tensor(tmp_path):
    from nemo_minitron.interop.safetensors_io import HFWeights

    make_hf_model("qwen2", tmp_path / "hf")
    w = HFWeights(tmp_path / "hf")
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
                 "model.layers.0.self_attn.k_proj.bias"):
        full = w.get(name)
        for dim in range(full.dim()):
            n = full.shape[dim]
            for start, stop in ((0, n // 2), (n // 4, n), (3, 3)):
                before = w.bytes_read
                part = w.get_slice(name, dim, start, stop)
                assert torch.equal(part, full.narrow(dim, start, stop - start)), (name, dim, start, stop)
                assert w.bytes_read - before == part.numel() * part.element_size()
    assert w.shape("model.embed_tokens.weight") == tuple(w.get("model.embed_tokens.weight").shape)
    with pytest.raises(ValueError, match="outside"):
        w.get_slice("model.norm.weight", 0, 0, 10**6)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_tp2_rank_shards_read_half(world, tmp_path, kind):
    """Each TP=2 rank's shards equal slicing the full import, and each rank reads about half the bytes."""
    from nemo_minitron.interop.hf import model_config_from_hf, read_hf_config
    from nemo_minitron.interop.mapping import model_rules, shard_for_rank
    from nemo_minitron.interop.megatron_io import read_rank_shard
    from nemo_minitron.interop.safetensors_io import DictWeights, HFWeights

    make_hf_model(kind, tmp_path / "hf")
    cfg, _ = model_config_from_hf(read_hf_config(tmp_path / "hf"))
    total = sum(t.numel() * t.element_size() for t in (HFWeights(tmp_path / "hf").get(n)
                                                        for n in HFWeights(tmp_path / "hf").keys()))
    for rank in (0, 1):
        sliced = HFWeights(tmp_path / "hf")
        for rule in model_rules(cfg):
            full_src = DictWeights({n: HFWeights(tmp_path / "hf").get(n) for n in rule.hf})
            full_shape, full, _ = read_rank_shard(rule, full_src, cfg, (), 0, 1)
            # megatron-core's TP split: column-parallel rows (qkv, fc1, vocab), row-parallel columns (proj, fc2)
            dim = 1 if rule.mcore.endswith(("linear_proj.weight", "linear_fc2.weight")) else \
                0 if full.dim() == 2 or rule.kind != "copy" else None
            want = shard_for_rank(rule, full, dim, rank, 2)
            got_shape, got, got_dim = read_rank_shard(rule, sliced, cfg, tuple(want.shape), rank, 2)
            assert got_shape == full_shape and got_dim == dim, rule.mcore
            assert torch.equal(got, want), rule.mcore
        assert sliced.bytes_read < 0.6 * total, (sliced.bytes_read, total)
