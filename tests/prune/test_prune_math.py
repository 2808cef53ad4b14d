"""Pure pruning math: aggregation, ranking, depth selection, budget search, target validation, YAML."""

import math

import pytest
import torch

from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.config.prune import PruneConfig
from nemo_minitron.models.params import count_parameters
from nemo_minitron.prune.depth import block_candidates, kept_layers, select_drop
from nemo_minitron.prune.importance import BatchAccumulator, aggregate, cosine_stats, group_scores, head_scores
from nemo_minitron.prune.ranking import attention_order, best_block, descending_order, select_attention, top_k
from nemo_minitron.prune.search import enumerate_candidates
from nemo_minitron.prune.validate import validate_targets
from tests.tiny import tiny


def test_aggregation_numbers_with_mask():
    # x[S=3, B=2, C=1]; sample 0 uses positions 0,1; sample 1 all three
    x = torch.tensor([[[1.0], [-2.0]], [[-3.0], [4.0]], [[100.0], [6.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    a0, a1 = (1 + 3) / 2, (2 + 4 + 6) / 3  # masked mean |x|
    assert aggregate(x, mask, "mean", "l2").item() == pytest.approx(math.sqrt(a0 ** 2 + a1 ** 2))
    assert aggregate(x, mask, "mean", "mean").item() == pytest.approx((a0 + a1) / 2)
    assert aggregate(x, mask, "mean", "var").item() == pytest.approx(((a0 - a1) / 2) ** 2)
    l0, l1 = math.sqrt(1 + 9), math.sqrt(4 + 16 + 36)
    assert aggregate(x, mask, "l2", "l2").item() == pytest.approx(math.hypot(l0, l1))
    v0 = torch.tensor([1.0, -3.0]).var(unbiased=False).item()
    v1 = torch.tensor([-2.0, 4.0, 6.0]).var(unbiased=False).item()
    assert aggregate(x, mask, "var", "mean").item() == pytest.approx((v0 + v1) / 2)
    # no mask = ModelOpt's unmasked mean over all positions
    assert aggregate(x, None, "mean", "l2").item() == pytest.approx(math.hypot(104 / 3, 4))


def test_accumulator_is_additive_and_skips_empty_samples():
    g = torch.Generator().manual_seed(0)
    vals = torch.rand(10, 5, generator=g)
    valid = torch.ones(10, dtype=torch.bool)
    valid[3] = False
    whole, parts = BatchAccumulator(5), [BatchAccumulator(5), BatchAccumulator(5)]
    whole.update(vals, valid)
    parts[0].update(vals[:4], valid[:4])
    parts[1].update(vals[4:], valid[4:])
    summed = parts[0].packed() + parts[1].packed()
    for how in ("l2", "mean", "var"):
        torch.testing.assert_close(BatchAccumulator.finalize_packed(summed, how),
                                   BatchAccumulator.finalize_packed(whole.packed(), how))
    assert whole.count.item() == 9


def test_head_and_group_scores_are_group_major():
    ch = torch.arange(16, dtype=torch.float64)  # 4 heads × d=4, 2 groups
    torch.testing.assert_close(head_scores(ch, 4), ch.view(4, 4).norm(dim=1))
    torch.testing.assert_close(group_scores(ch, 2), torch.stack([ch[:8].norm(), ch[8:].norm()]))


def test_cosine_stats_identity_and_mask():
    h = torch.randn(5, 2, 8)
    s, c = cosine_stats(h, h, None)
    assert abs(s.item()) < 1e-5 and c.item() == 10
    s, c = cosine_stats(h, -h, torch.tensor([[True] * 5, [True, False, False, False, False]]))
    assert s.item() == pytest.approx(12.0) and c.item() == 6


def test_ranking_ties_and_gqa():
    scores = torch.tensor([1.0, 3.0, 3.0, 0.5, 2.0])
    assert descending_order(scores) == [1, 2, 4, 0, 3]
    assert top_k(scores, 2) == [1, 2]
    assert top_k(torch.zeros(4), 2) == [0, 1]  # ties: lower index wins
    heads = torch.tensor([1.0, 9, 3, 2, 5, 4, 8, 7])  # 8 heads, 4 groups of 2
    groups = torch.tensor([5.0, 1.0, 6.0, 7.0])
    g, h = select_attention(heads, groups, 4, 2, 2)
    assert g == [2, 3] and h == [4, 6]  # group 2 -> head 4 (5>4); group 3 -> head 6 (8>7)
    g, h = select_attention(heads, groups, 4, 4, 4)
    assert g == [0, 1, 2, 3] and h == [1, 2, 4, 6]
    go, ho = attention_order(heads, groups, 4)
    assert go == [3, 2, 0, 1] and ho == [6, 7, 4, 5, 1, 0, 2, 3]


def test_depth_selection():
    # layers are 0-based inside the library; a block never contains the last layer
    assert block_candidates(5, 2) == [[0, 1], [1, 2], [2, 3]]
    cos = {0: 0.9, 1: 0.1, 2: 0.2, 3: 0.8}
    assert select_drop("cosine", 4, 2, cos) == [1, 2]
    assert select_drop("layer_loss", 4, 3, cos, layer_loss={0: 9.0, 1: 5.0, 2: 4.0, 3: 7.0}) == [2]
    assert select_drop("block_loss", 4, 2, cos, block_loss={0: 3.0, 1: 2.5, 2: 2.5}) == [1, 2]
    assert best_block({0: 1.0, 1: 0.5}, 3) == [1, 2, 3]
    assert kept_layers(4, [1, 2]) == [0, 3]


def test_budget_search_respects_budget_and_divisors():
    cfg = tiny()
    target = int(count_parameters(cfg).total * 0.7)
    cands = enumerate_candidates(cfg, target, tolerance=0.1, top_k=5, hidden_divisor=16, ffn_divisor=32, tp=2)
    assert cands and len(cands) <= 5
    for c in cands:
        assert target * 0.9 <= c.params <= target and c.ffn_hidden_size % 32 == 0 and c.hidden_size % 16 == 0
        shape = cfg.replace(hidden_size=c.hidden_size, ffn_hidden_size=c.ffn_hidden_size, num_layers=c.num_layers,
                            kv_channels=cfg.head_dim)
        assert count_parameters(shape).total == c.params
    # independent brute force over the documented grid (widths and depth down to 50%): the candidates are the
    # top_k shapes closest below the budget, closest first; the wide tolerance makes the top_k cut matter
    grid = [(h, f, n) for h in (32, 48, 64) for f in (64, 96, 128) for n in (2, 3, 4)]
    shapes = sorted(((count_parameters(cfg.replace(hidden_size=h, ffn_hidden_size=f, num_layers=n,
                                                   kv_channels=cfg.head_dim)).total, f, n, h) for h, f, n in grid),
                    reverse=True)
    for tolerance, k in ((0.1, 5), (0.6, 4)):
        want = [s for s in shapes if target * (1 - tolerance) <= s[0] <= target]
        got = enumerate_candidates(cfg, target, tolerance=tolerance, top_k=k, hidden_divisor=16, ffn_divisor=32,
                                   tp=2)
        assert [(c.params, c.ffn_hidden_size, c.num_layers, c.hidden_size) for c in got] == want[:k]
    assert len(want) > k


TINY = tiny(tensor_model_parallel_size=2)


@pytest.mark.parametrize("changes, needle", [
    ({}, "nothing to prune"),
    ({"ffn_hidden_size": 63}, "prune.ffn_hidden_size=63 is not divisible by model.tensor_model_parallel_size=2"),
    ({"ffn_hidden_size": 256}, "prune.ffn_hidden_size=256 is larger than the original model.ffn_hidden_size=128"),
    ({"num_attention_heads": 6, "num_query_groups": 4}, "prune.num_attention_heads=6 is not a multiple of prune.num_query_groups=4"),
    ({"num_attention_heads": 7}, "prune.num_attention_heads=7 is not divisible by model.tensor_model_parallel_size=2"),
    ({"num_attention_heads": 6}, "prune.num_attention_heads=6 is not a multiple of model.num_query_groups=4"),
    ({"num_query_groups": 3}, "prune.num_query_groups=3 is not divisible by model.tensor_model_parallel_size=2"),
    ({"num_query_groups": 8}, "prune.num_query_groups=8 is larger than the original"),
    ({"num_attention_heads": 12, "num_query_groups": 4}, "prune.num_attention_heads=12 is larger"),
    ({"num_attention_heads": 2, "num_query_groups": 2, "hidden_size": 0}, "prune.hidden_size=0 must be a positive integer"),
    ({"hidden_size": 65}, "prune.hidden_size=65 is larger than the original model.hidden_size=64"),
    ({"num_layers": 5}, "prune.num_layers=5 is larger than the original model.num_layers=4"),
    ({"drop_layers": [0]}, "prune.drop_layers[0]=0 is out of range"),
    ({"drop_layers": [2, 5]}, "prune.drop_layers[1]=5 is out of range"),
    ({"drop_layers": [2, 2]}, "lists a layer twice"),
    ({"drop_layers": [1, 2, 3, 4]}, "would remove every layer"),
    ({"drop_layers": [2], "ffn_hidden_size": 64}, "prune.drop_layers is exclusive with the other targets; unset prune.ffn_hidden_size"),
    ({"target_params": 10, "hidden_size": 32}, "prune.target_params is exclusive with explicit targets"),
    ({"target_params": 10 ** 9}, "prune.target_params=1000000000 is not below"),
    ({"ffn_hidden_size": 64, "seq_aggregation": "max"}, "prune.seq_aggregation='max'"),
    ({"ffn_hidden_size": 64, "depth_method": "random"}, "prune.depth_method='random'"),
    ({"ffn_hidden_size": 64, "calib_seq_length": 512}, "prune.calib_seq_length=512 exceeds model.max_position_embeddings=256"),
    ({"ffn_hidden_size": 64, "calib_data": None}, "prune.calib_data is required"),
    ({"ffn_hidden_size": 64, "num_calib_size": 0}, "prune.num_calib_size=0 must be a positive integer"),
])
def test_invalid_targets_name_the_key(changes, needle):
    p = PruneConfig(**({"calib_data": "x.pt"} | changes))
    with pytest.raises(ConfigError) as err:
        validate_targets(p, TINY)
    assert needle in str(err.value)


def test_valid_targets_pass():
    validate_targets(PruneConfig(calib_data="x.pt", ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                                 hidden_size=48, num_layers=3), TINY)
    validate_targets(PruneConfig(drop_layers=[2, 4]), TINY)
    validate_targets(PruneConfig(num_query_groups=2, calib_data="x.pt"), TINY)  # heads follow: 2 per group


def test_yaml_composes_and_validates():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from nemo_minitron.config.prune import MegatronPruneConfig
    from nemo_minitron.config.store import register_configs
    from nemo_minitron.paths import conf_dir

    register_configs()
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = compose("megatron_prune", overrides=["model.restore_from_path=/c", "export.save_path=/o",
                                                   "prune.ffn_hidden_size=64", "prune.drop_layers=[]"])
        job = OmegaConf.to_object(cfg)
        assert isinstance(job, MegatronPruneConfig) and job.prune.ffn_hidden_size == 64
        assert job.prune.seq_aggregation == "mean" and job.prune.batch_aggregation == "l2"
        with pytest.raises(Exception, match="not_a_key"):
            compose("megatron_prune", overrides=["prune.not_a_key=1"])


def _synthetic_state(cfg, te: bool):
    """Random GPTModel-shaped state dict with local-spec or Transformer-Engine key names."""
    g = torch.Generator().manual_seed(1)
    h, f, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim
    qkv = (cfg.num_attention_heads + 2 * cfg.query_groups) * d
    sd = {"embedding.word_embeddings.weight": torch.randn(cfg.vocab_size, h, generator=g),
          "decoder.final_layernorm.weight": torch.randn(h, generator=g),
          "output_layer.weight": torch.randn(cfg.vocab_size, h, generator=g)}
    for i in range(cfg.num_layers):
        pre = f"decoder.layers.{i}."
        n1 = "self_attention.linear_qkv.layer_norm_weight" if te else "input_layernorm.weight"
        n2 = "mlp.linear_fc1.layer_norm_weight" if te else "pre_mlp_layernorm.weight"
        sd |= {pre + n1: torch.randn(h, generator=g), pre + n2: torch.randn(h, generator=g),
               pre + "self_attention.linear_qkv.weight": torch.randn(qkv, h, generator=g),
               pre + "self_attention.linear_proj.weight": torch.randn(h, cfg.num_attention_heads * d, generator=g),
               pre + "mlp.linear_fc1.weight": torch.randn(2 * f, h, generator=g),
               pre + "mlp.linear_fc2.weight": torch.randn(h, f, generator=g),
               pre + "mlp.linear_fc1._extra_state": None}
    return sd


def test_surgery_handles_te_fused_norm_names_and_layouts():
    from nemo_minitron.prune.surgery import PrunePlan, prune_state_dict

    cfg = ModelConfig(num_layers=2, hidden_size=16, ffn_hidden_size=8, num_attention_heads=4, num_query_groups=2,
                      kv_channels=2, vocab_size=10)
    plan = PrunePlan(hidden=[0, 3, 5, 9, 15], ffn={0: [1, 6], 1: [0, 7]}, groups={0: [1], 1: [0]},
                     heads={0: [3], 1: [0]}, keep_layers=[1])
    local, _ = prune_state_dict(_synthetic_state(cfg, te=False), cfg, plan)
    fused, new_cfg = prune_state_dict(_synthetic_state(cfg, te=True), cfg, plan)
    assert (new_cfg.num_layers, new_cfg.hidden_size, new_cfg.ffn_hidden_size, new_cfg.num_attention_heads,
            new_cfg.num_query_groups, new_cfg.kv_channels) == (1, 5, 2, 1, 1, 2)
    ren = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
           "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight"}
    for k, v in fused.items():
        lk = k
        for a, b in ren.items():
            lk = lk.replace(a, b)
        assert (v is None and local[lk] is None) or torch.equal(v, local[lk]), k
    src = _synthetic_state(cfg, te=False)
    qkv = src["decoder.layers.1.self_attention.linear_qkv.weight"]  # rows per group: q0 q1 k v, d=2 each
    want = torch.cat([qkv[0:2], qkv[4:8]])[:, [0, 3, 5, 9, 15]]  # group 0: head 0 + k + v
    torch.testing.assert_close(local["decoder.layers.0.self_attention.linear_qkv.weight"], want)
    fc1 = src["decoder.layers.1.mlp.linear_fc1.weight"]  # [gate(8); up(8)]
    torch.testing.assert_close(local["decoder.layers.0.mlp.linear_fc1.weight"], fc1[[0, 7, 8, 15]][:, [0, 3, 5, 9, 15]])
    proj = src["decoder.layers.1.self_attention.linear_proj.weight"]
    torch.testing.assert_close(local["decoder.layers.0.self_attention.linear_proj.weight"],
                               proj[[0, 3, 5, 9, 15]][:, 0:2])
    with pytest.raises(KeyError, match="does not know how to slice"):
        prune_state_dict({"decoder.layers.1.mystery.weight": torch.zeros(2)}, cfg, plan)


def test_fused_norm_recompute_matches_torch_norms():
    from nemo_minitron.prune.hooks import _norm_output

    x = torch.randn(3, 2, 8)
    mod = torch.nn.Module()
    mod.layer_norm_weight = torch.nn.Parameter(torch.randn(8))
    rms = torch.nn.RMSNorm(8, eps=1e-5)
    rms.weight.data.copy_(mod.layer_norm_weight.data)
    torch.testing.assert_close(_norm_output(mod, x, "RMSNorm", 1e-5), rms(x))
    mod.layer_norm_bias = torch.nn.Parameter(torch.randn(8))
    ln = torch.nn.LayerNorm(8, eps=1e-5)
    ln.weight.data.copy_(mod.layer_norm_weight.data)
    ln.bias.data.copy_(mod.layer_norm_bias.data)
    torch.testing.assert_close(_norm_output(mod, x, "LayerNorm", 1e-5), ln(x))


def test_tp_shard_layout_of_pruned_tensors():
    from nemo_minitron.prune.sharded import shard_of

    full = torch.arange(16.0).view(16, 1)  # gated fc1 rows: gate 0..7, up 8..15
    assert shard_of(full, 0, True, 0, 2).flatten().tolist() == [0, 1, 2, 3, 8, 9, 10, 11]  # [gate_0; up_0]
    assert shard_of(full, 0, True, 1, 2).flatten().tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    cols = torch.arange(6.0).view(1, 6)  # row-parallel input columns
    assert shard_of(cols, 1, False, 1, 3).flatten().tolist() == [2, 3]
    assert shard_of(cols, 1, False, 0, 1) is cols
