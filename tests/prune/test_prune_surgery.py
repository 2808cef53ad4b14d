"""Single-process pruning invariants on real megatron-core GPT models (TP=1, PP=1)."""

import json
import subprocess
import sys

import pytest
import torch

from nemo_minitron import runtime
from nemo_minitron.checkpoint import load_checkpoint, load_model_config, save_checkpoint
from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.config.prune import ExportConfig, MegatronPruneConfig, PruneConfig
from nemo_minitron.models.builder import build_gpt_model
from nemo_minitron.models.forward import forward_logits
from nemo_minitron.prune.calibrate import TokenBatch, run_forward, skip_layers
from nemo_minitron.prune.hooks import ImportanceCollector
from nemo_minitron.prune.importance import aggregate
from nemo_minitron.prune.plan import make_plan, permutation_plan
from nemo_minitron.prune.surgery import prune_state_dict
from tests.tiny import tiny

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]

VARIANTS = {
    "llama": dict(),
    "tied_bias_layernorm": dict(share_embeddings_and_output_weights=True, add_qkv_bias=True, add_bias_linear=True,
                                qk_layernorm=True, normalization="LayerNorm", activation="gelu",
                                gated_linear_unit=False),
}


def _cfg(**kw):
    return tiny(**kw)


def _data(n=12, seq=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 256, (n, seq), generator=g)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[::3, seq // 2:] = False
    return TokenBatch(tokens, mask)


def _model_and_scores(cfg):
    ctx = runtime.init_model_parallel(1, 1, seed=7)
    model = build_gpt_model(cfg)
    with torch.no_grad():  # non-trivial norm weights and biases so every slice matters
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    collector = ImportanceCollector(model, ctx, cfg.num_attention_heads, cfg.query_groups,
                                    normalization=cfg.normalization)
    run_forward(model, _data(), ctx, 4, collector=collector, progress=False)
    collector.remove()
    return ctx, model, collector.finalize()


def _rebuild(model, cfg, plan):
    sd, new_cfg = prune_state_dict(model.state_dict(), cfg, plan)
    new = build_gpt_model(new_cfg)
    missing, unexpected = new.load_state_dict(sd, strict=False)
    assert not [k for k in list(missing) + list(unexpected) if not k.endswith("_extra_state")]
    return new, new_cfg


def _zeroed(model, cfg, ffn=None, heads=None, layers=()):
    """Copy of ``model`` with dropped neurons / heads / layers zeroed where they feed the residual stream."""
    z = build_gpt_model(cfg)
    z.load_state_dict(model.state_dict())
    d = cfg.head_dim
    with torch.no_grad():
        for i, layer in enumerate(z.decoder.layers):
            if ffn is not None:
                drop = [j for j in range(cfg.ffn_hidden_size) if j not in set(ffn[i])]
                layer.mlp.linear_fc2.weight[:, drop] = 0
            if heads is not None:
                for h in range(cfg.num_attention_heads):
                    if h not in set(heads[i]):
                        layer.self_attention.linear_proj.weight[:, h * d:(h + 1) * d] = 0
            if i in layers:
                for lin in (layer.self_attention.linear_proj, layer.mlp.linear_fc2):
                    lin.weight.zero_()
                    if getattr(lin, "bias", None) is not None:
                        lin.bias.zero_()
    return z


def _hidden_zeroed(z, cfg, kept):
    """``z`` with hidden channels outside ``kept`` zeroed where written and norms taken over ``kept`` only."""
    kept = torch.tensor(sorted(kept))
    drop = torch.tensor([c for c in range(cfg.hidden_size) if c not in set(kept.tolist())])

    def norm_over_kept(m, args, out):
        x = args[0][..., kept]
        bias = m.bias[kept] if getattr(m, "bias", None) is not None else None
        if cfg.normalization == "LayerNorm":
            y = torch.nn.functional.layer_norm(x, (len(kept),), m.weight[kept], bias, cfg.layernorm_epsilon)
        else:
            y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.layernorm_epsilon) * m.weight[kept]
        full = torch.zeros_like(out)
        full[..., kept] = y
        return full

    with torch.no_grad():
        z.embedding.word_embeddings.weight[:, drop] = 0
        for layer in z.decoder.layers:
            for lin in (layer.self_attention.linear_proj, layer.mlp.linear_fc2):
                lin.weight[drop, :] = 0
                if getattr(lin, "bias", None) is not None:
                    lin.bias[drop] = 0
    for m in [n for layer in z.decoder.layers for n in (layer.input_layernorm, layer.pre_mlp_layernorm)] + \
            [z.decoder.final_layernorm]:
        m.register_forward_hook(norm_over_kept)
    return z


TOKENS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))


def test_collector_matches_reference_aggregation():
    cfg = _cfg()
    ctx = runtime.init_model_parallel(1, 1, seed=7)
    model = build_gpt_model(cfg)
    data = _data(n=4)
    seen = {}
    layer = model.decoder.layers[1]
    hooks = [layer.mlp.linear_fc2.register_forward_pre_hook(lambda m, a: seen.setdefault("ffn", a[0].clone())),
             layer.self_attention.linear_proj.register_forward_pre_hook(
                 lambda m, a: seen.setdefault("attn", a[0].clone())),
             layer.pre_mlp_layernorm.register_forward_hook(lambda m, a, o: seen.setdefault("hid1", o.clone())),
             layer.register_forward_hook(lambda m, a, k, o: seen.update(hin=k["hidden_states"].clone(),
                                                                        hout=o[0].clone()), with_kwargs=True)]
    collector = ImportanceCollector(model, ctx, 8, 4)
    run_forward(model, data, ctx, 4, collector=collector, progress=False)
    for h in hooks:
        h.remove()
    scores = collector.finalize()
    torch.testing.assert_close(scores.ffn[1], aggregate(seen["ffn"], data.mask))
    torch.testing.assert_close(scores.attn_channels[1], aggregate(seen["attn"], data.mask))
    torch.testing.assert_close(scores.hidden_sites[1][1], aggregate(seen["hid1"], data.mask))
    cos = torch.nn.functional.cosine_similarity(seen["hin"], seen["hout"], dim=-1).t()[data.mask]
    assert scores.layer_cosine[1] == pytest.approx(float((1 - cos).mean()), rel=1e-5)
    assert scores.hidden.shape == (64,) and scores.heads(1).shape == (8,) and scores.groups(1).shape == (4,)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_permuting_by_importance_keeps_logits(variant):
    cfg = _cfg(**VARIANTS[variant])
    _, model, scores = _model_and_scores(cfg)
    plan = permutation_plan(cfg, scores)
    assert plan.hidden != sorted(plan.hidden) and plan.ffn[0] != sorted(plan.ffn[0])  # a real reordering
    permuted, new_cfg = _rebuild(model, cfg, plan)
    assert new_cfg.arch_diff(cfg) == {"kv_channels": (8, None)} or new_cfg.arch_diff(cfg) == {}
    torch.testing.assert_close(forward_logits(permuted, TOKENS), forward_logits(model, TOKENS), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pruned_model_equals_original_with_units_zeroed(variant):
    cfg = _cfg(**VARIANTS[variant])
    _, model, scores = _model_and_scores(cfg)
    ref = forward_logits(model, TOKENS)
    cases = {
        "ffn": dict(ffn=48),
        "heads": dict(heads=4),
        "groups": dict(groups=2),
        "layers": dict(drop=[1, 3]),
        "all": dict(ffn=32, heads=2, groups=2, drop=[2]),
    }
    for name, targets in cases.items():
        plan = make_plan(cfg, scores, **targets)
        pruned, new_cfg = _rebuild(model, cfg, plan)
        zeroed = _zeroed(model, cfg, ffn=plan.ffn or None, heads=plan.heads or None, layers=targets.get("drop", ()))
        want = forward_logits(zeroed, TOKENS)
        got = forward_logits(pruned, TOKENS)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5, msg=f"{variant}/{name}")
        assert not torch.allclose(got, ref, atol=1e-4), f"{variant}/{name}: pruning changed nothing"
        assert new_cfg.kv_channels == cfg.head_dim
        assert new_cfg.ffn_hidden_size == targets.get("ffn", 128)
        assert new_cfg.num_layers == 4 - len(targets.get("drop", []))
    plan = make_plan(cfg, scores, hidden=40, groups=2)
    pruned, new_cfg = _rebuild(model, cfg, plan)
    assert (new_cfg.hidden_size, new_cfg.num_attention_heads, new_cfg.num_query_groups, new_cfg.kv_channels) == \
        (40, 4, 2, 8)
    # reference: the original model with the dropped hidden channels zeroed in the residual stream and every
    # norm computed over the kept channels only (hooks), so only the kept channels carry signal
    want = forward_logits(_hidden_zeroed(_zeroed(model, cfg, heads=plan.heads), cfg, plan.hidden), TOKENS)
    torch.testing.assert_close(forward_logits(pruned, TOKENS), want, atol=2e-5, rtol=1e-5, msg=variant)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    runtime.init_model_parallel(1, 1, seed=11)
    cfg = _cfg()
    save_checkpoint(build_gpt_model(cfg), cfg, root / "ckpt")
    data = _data(n=40, seq=32, seed=5)
    torch.save({"tokens": data.tokens, "mask": data.mask}, root / "calib.pt")
    return root


def _job(root, out, cache=None, calib=True, **targets):
    return MegatronPruneConfig(
        model=ModelConfig(restore_from_path=str(root / "ckpt")),
        prune=PruneConfig(calib_data=str(root / "calib.pt") if calib else None, num_calib_size=24,
                          calib_seq_length=32, num_val_samples=8, importance_cache=cache, **targets),
        export=ExportConfig(save_path=str(root / out)))


def _weights(path):
    cfg = load_model_config(path)
    runtime.init_model_parallel(1, 1, seed=1)
    model = build_gpt_model(cfg)
    load_checkpoint(model, cfg, path)
    return model, {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def test_cache_reprune_equals_fresh_and_report(tiny_ckpt):
    from nemo_minitron.prune.pipeline import run_prune

    root = tiny_ckpt
    cache = str(root / "scores.pt")
    first = run_prune(_job(root, "width", cache=cache, ffn_hidden_size=64, hidden_size=48))
    assert (root / "scores.pt").is_file() and (root / "width" / "layer_importance.png").is_file()
    report = json.loads((root / "width" / "pruning_report.json").read_text())
    assert report["pruned_config"]["ffn_hidden_size"] == 64 and report["pruned_config"]["hidden_size"] == 48
    assert report["params"]["pruned"]["num_parameters"] < report["params"]["original"]["num_parameters"]
    assert len(report["kept"]["ffn"]["1"]) == 64 and len(report["dropped"]["ffn"]["1"]) == 64
    assert len(report["scores"]["ffn_neurons"]["4"]) == 128 and len(report["scores"]["layer_cosine"]) == 4
    assert report["validation"]["loss_before"] == first["validation"]["loss_before"] > 0
    assert report["timing_seconds"]["calibration"] > 0
    # second target set: from the cache only (no calibration data at all) vs a fresh run
    targets = dict(num_attention_heads=4, num_query_groups=2, num_layers=3, ffn_hidden_size=96)
    cached = run_prune(_job(root, "cached", cache=cache, calib=False, **targets))
    fresh = run_prune(_job(root, "fresh", **targets))
    assert cached["timing_seconds"]["calibration"] is None and fresh["timing_seconds"]["calibration"] > 0
    assert cached["kept"] == fresh["kept"] and cached["dropped"] == fresh["dropped"]
    assert cached["validation"] == fresh["validation"]
    m1, w1 = _weights(root / "cached")
    m2, w2 = _weights(root / "fresh")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    torch.testing.assert_close(forward_logits(m1, TOKENS), forward_logits(m2, TOKENS), atol=0, rtol=0)
    assert fresh["pruned_config"]["num_layers"] == 3 and fresh["dropped"]["layers"][0] < 4


def test_budget_search_ranks_candidates(tiny_ckpt):
    from nemo_minitron.models.params import count_parameters
    from nemo_minitron.prune.pipeline import run_prune

    root = tiny_ckpt
    target = int(count_parameters(_cfg()).total * 0.75)
    rep = run_prune(_job(root, "search", cache=str(root / "scores.pt"), target_params=target, search_top_k=3,
                         search_tolerance=0.2, search_hidden_divisor=16, search_ffn_divisor=32))
    ranking = rep["search"]
    assert 1 <= len(ranking) <= 3
    assert [r["val_loss"] for r in ranking] == sorted(r["val_loss"] for r in ranking)
    # the ranked numbers are real: pruning straight to the last-ranked shape gives its validation loss
    last, orig = ranking[-1], _cfg()
    targets = {k: last[k] for k in ("ffn_hidden_size", "hidden_size", "num_layers") if last[k] != getattr(orig, k)}
    assert targets and last["val_loss"] > ranking[0]["val_loss"]
    direct = run_prune(_job(root, "search_last", cache=str(root / "scores.pt"), depth_method="cosine", **targets))
    assert direct["validation"]["loss_after"] == pytest.approx(last["val_loss"], rel=1e-6)
    best = ranking[0]
    assert rep["params"]["pruned"]["num_parameters"] == best["params"] <= target
    assert rep["validation"]["loss_after"] == pytest.approx(best["val_loss"], abs=1e-12)


def test_bad_target_fails_before_any_work(tiny_ckpt, tmp_path):
    from nemo_minitron.prune.pipeline import run_prune

    job = _job(tiny_ckpt, "never", ffn_hidden_size=100000)
    job.prune.calib_data = str(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="prune.ffn_hidden_size=100000 is larger than the original"):
        run_prune(job)
    assert not (tiny_ckpt / "never").exists()


def test_cli_drop_layers_matches_skipping_layers(tiny_ckpt):
    root = tiny_ckpt
    cmd = [sys.executable, str(REPO / "examples" / "megatron_prune.py"), f"model.restore_from_path={root / 'ckpt'}",
           f"export.save_path={root / 'dropped'}", "prune.drop_layers=[2,4]", f"prune.calib_data={root / 'calib.pt'}",
           "prune.num_val_samples=8", "prune.calib_seq_length=32", f"prune.val_data={root / 'calib.pt'}", f"hydra.run.dir={root / 'hydra'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=root,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "pruned" in proc.stdout
    report = json.loads((root / "dropped" / "pruning_report.json").read_text())
    assert report["dropped"]["layers"] == [2, 4] and report["pruned_config"]["num_layers"] == 2
    assert report["validation"]["num_samples"] == 8 and report["importance"]["val_data"].endswith("calib.pt")
    pruned, _ = _weights(root / "dropped")
    original, _ = _weights(root / "ckpt")
    with skip_layers(original, [1, 3]):  # 0-based: layer numbers 2 and 4
        want = forward_logits(original, TOKENS)
    torch.testing.assert_close(forward_logits(pruned, TOKENS), want, atol=1e-5, rtol=1e-5)
