"""Hugging Face <-> megatron: layout math, config mapping, logits vs transformers at TP=1 and TP=2, pruned shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.interop import mapping
from tests.launch import torchrun
from tests.workers.interop_common import KINDS, TOKENS, hf_logits, make_hf_model, megatron_logits

WORKER = Path(__file__).parents[1] / "workers" / "interop_tp2.py"
TOL = 1e-5


# --------------------------------------------------------------------------- pure layout math


def test_qkv_layout_is_per_group():
    heads, groups, d, hidden = 6, 2, 3, 5
    q = torch.arange(heads * d * hidden, dtype=torch.float32).reshape(heads * d, hidden)
    k = -torch.arange(groups * d * hidden, dtype=torch.float32).reshape(groups * d, hidden) - 1
    v = k - 1000
    qkv = mapping.merge_qkv(q, k, v, heads, groups, d)
    assert qkv.shape == ((heads + 2 * groups) * d, hidden)
    block = (heads // groups + 2) * d
    # group 1 = [q heads 3,4,5 ; k head 1 ; v head 1]
    g1 = qkv[block: 2 * block]
    assert torch.equal(g1[: 3 * d], q[3 * d: 6 * d])
    assert torch.equal(g1[3 * d: 4 * d], k[d: 2 * d])
    assert torch.equal(g1[4 * d:], v[d: 2 * d])
    assert all(torch.equal(a, b) for a, b in zip(mapping.split_qkv(qkv, heads, groups, d), (q, k, v)))
    bias = mapping.merge_qkv(q[:, 0], k[:, 0], v[:, 0], heads, groups, d)  # 1-D biases follow the same layout
    assert torch.equal(bias, qkv[:, 0])
    with pytest.raises(ValueError, match="k_proj has 9 rows; expected 6"):
        mapping.merge_qkv(q, torch.zeros(9, hidden), v, heads, groups, d)


def test_fc1_and_tp_slices():
    gate, up = torch.arange(8.0).reshape(4, 2), 100 + torch.arange(8.0).reshape(4, 2)
    fc1 = mapping.merge_fc1(gate, up)
    assert torch.equal(torch.cat(mapping.split_fc1(fc1)), fc1)
    r1 = mapping.glu_tp_slice(fc1, 1, 2)  # rank 1 holds [gate rows 2-3; up rows 2-3]
    assert torch.equal(r1, torch.cat([gate[2:], up[2:]]))
    assert torch.equal(mapping.tp_slice(fc1, 1, 0, 2), fc1[:, :1])
    assert mapping.tp_slice(fc1, None, 1, 2) is fc1


def test_rules_cover_every_feature():
    cfg = ModelConfig(num_layers=2, add_qkv_bias=True, qk_layernorm=True, share_embeddings_and_output_weights=True)
    names = {r.mcore for r in mapping.model_rules(cfg)}
    assert "decoder.layers.1.self_attention.linear_qkv.bias" in names
    assert "decoder.layers.0.self_attention.k_layernorm.weight" in names
    assert "output_layer.weight" not in names  # tied, single stage
    last = {r.mcore: r.hf for r in mapping.model_rules(cfg, [1], first_stage=False, last_stage=True)}
    assert last["output_layer.weight"] == ("model.embed_tokens.weight",)  # PP last stage keeps a tied copy


# --------------------------------------------------------------------------- config mapping


def test_config_mapping_roundtrip_and_errors():
    from nemo_minitron.interop.hf import hf_config_from_model_config, infer_model_type, model_config_from_hf

    cfg = ModelConfig(num_layers=3, hidden_size=48, ffn_hidden_size=72, num_attention_heads=6, num_query_groups=2,
                      kv_channels=20, vocab_size=128, rope_scaling=True, rope_scaling_factor=32.0, rotary_base=5e5,
                      share_embeddings_and_output_weights=True)
    hf = hf_config_from_model_config(cfg)
    assert hf.model_type == "llama" and hf.head_dim == 20 and hf.tie_word_embeddings
    back, info = model_config_from_hf(hf)
    assert back.arch_diff(cfg) == {}, back.arch_diff(cfg)
    assert infer_model_type(cfg.replace(add_qkv_bias=True)) == "qwen2"
    assert infer_model_type(cfg.replace(qk_layernorm=True, rope_scaling=False)) == "qwen3"
    with pytest.raises(ConfigError, match="qk_layernorm"):
        hf_config_from_model_config(cfg.replace(rope_scaling=False), model_type="qwen3")
    with pytest.raises(ConfigError, match="normalization=LayerNorm"):
        hf_config_from_model_config(cfg.replace(normalization="LayerNorm"))
    bad = hf.to_dict() | {"rope_parameters": None, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    with pytest.raises(ConfigError, match="rope_type='yarn'"):
        model_config_from_hf(bad)
    with pytest.raises(ConfigError, match="model_type='gpt2'"):
        model_config_from_hf({"model_type": "gpt2"})


# --------------------------------------------------------------------------- end to end at TP=1


@pytest.mark.compat
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_hf_megatron_hf_roundtrip(world, tmp_path, kind):
    from nemo_minitron.checkpoint import read_metadata, tokenizer_path
    from nemo_minitron.interop.hf import export_hf, import_hf

    src = make_hf_model(kind, tmp_path / "hf", max_shard_size="100KB" if kind == "llama" else "5GB")
    ref = hf_logits(src)
    ckpt = import_hf(tmp_path / "hf", tmp_path / "ckpt")
    assert (tokenizer_path(ckpt) / "tokenizer.json").is_file()
    assert read_metadata(ckpt)["extra"]["hf"]["model_type"] == src.config.model_type
    diff = (megatron_logits(ckpt) - ref).abs().max().item()
    assert diff < TOL, f"{kind}: megatron vs transformers max |diff| {diff}"

    out = export_hf(ckpt, tmp_path / "out", max_shard_size="100KB")
    cfg_json = json.loads((out / "config.json").read_text())
    assert cfg_json["model_type"] == src.config.model_type
    c = src.config
    assert cfg_json["head_dim"] == (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    assert cfg_json["tie_word_embeddings"] == src.config.tie_word_embeddings
    assert (out / "model.safetensors.index.json").is_file() and (out / "tokenizer.json").is_file()
    # exact round trip: same weights, same logits, bit for bit
    assert torch.equal(hf_logits(out), ref)


def test_import_rejects_unmatched_tensors(world, tmp_path):
    from safetensors.torch import load_file, save_file

    from nemo_minitron.interop.hf import import_hf
    from nemo_minitron.interop.megatron_io import UnmatchedTensorsError

    make_hf_model("llama_tied", tmp_path / "hf")
    f = tmp_path / "hf" / "model.safetensors"
    state = load_file(f)
    state["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2)
    del state["model.layers.1.post_attention_layernorm.weight"]
    save_file(state, f, metadata={"format": "pt"})
    with pytest.raises(UnmatchedTensorsError) as err:
        import_hf(tmp_path / "hf", tmp_path / "ckpt")
    assert "model.layers.1.post_attention_layernorm.weight" in str(err.value)
    assert "model.layers.0.mlp.extra_proj.weight" in str(err.value)
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_handmade_pruned_megatron_model_exports(world, tmp_path, model_type):
    """A megatron model with an arbitrary pruned shape (as the pruning step writes it) exports to HF exactly."""
    from nemo_minitron import runtime
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.interop.hf import export_hf
    from nemo_minitron.models.builder import build_gpt_model
    from nemo_minitron.models.forward import forward_logits

    cfg = ModelConfig(name="pruned", num_layers=3, hidden_size=40, ffn_hidden_size=56, num_attention_heads=6,
                      num_query_groups=3, kv_channels=12, vocab_size=128,
                      share_embeddings_and_output_weights=True, rotary_base=1e5, seed=7,
                      add_qkv_bias=model_type == "qwen2", qk_layernorm=model_type == "qwen3",
                      rope_scaling=model_type == "llama", rope_scaling_factor=32.0, max_position_embeddings=16384)
    runtime.init_model_parallel(1, 1, seed=7)
    model = build_gpt_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.1 * torch.randn_like(p)) if "norm" in name else p.mul_(3.0)
    ref = forward_logits(model, TOKENS)
    ckpt = save_checkpoint(model, cfg, tmp_path / "ckpt")
    out = export_hf(ckpt, tmp_path / "hf", dtype="float32")
    cfg_json = json.loads((out / "config.json").read_text())
    # hidden 40 % 6 heads != 0: transformers' LlamaConfig refuses it, so a Llama exports as the identical Mistral
    assert cfg_json["model_type"] == {"llama": "mistral"}.get(model_type, model_type)
    assert (cfg_json["hidden_size"], cfg_json["intermediate_size"], cfg_json["num_attention_heads"],
            cfg_json["num_key_value_heads"], cfg_json["head_dim"], cfg_json["num_hidden_layers"]) == (40, 56, 6, 3, 12, 3)
    diff = (hf_logits(out) - ref).abs().max().item()
    assert diff < TOL, diff


@pytest.mark.compat
@pytest.mark.multiproc
def test_tp2_import_and_logits(tmp_path):
    """One 2-rank launch: import sharded at TP=2 (PP=2 for the tied model), logits at TP=2/PP=2, export back."""
    results = torchrun(WORKER, 2, [str(tmp_path), *sorted(KINDS)], timeout=540)
    assert sorted(r["kind"] for r in results) == sorted(KINDS)
    for r in results:
        assert r["tp2_vs_hf"] < TOL, r
        assert r["pp2_vs_hf"] is None or r["pp2_vs_hf"] < TOL, r
        assert r["roundtrip_vs_hf"] == 0.0, r
        # export_hf builds only this rank's shard (it used to load the full model on every rank)
        assert len(r["export_params_per_rank"]) == 2, r
        assert all(n < 0.8 * r["hf_params"] for n in r["export_params_per_rank"]), r


def test_bf16_source_roundtrips_bitwise(world, tmp_path):
    """A bf16 checkpoint converted with model.precision=bf16 exports with dtype=auto to the identical bytes."""
    from safetensors.torch import load_file

    from nemo_minitron.interop.hf import export_hf, import_hf

    make_hf_model("qwen2", tmp_path / "hf").to(torch.bfloat16).save_pretrained(str(tmp_path / "hf"))
    ckpt = import_hf(tmp_path / "hf", tmp_path / "ckpt", precision="bf16")
    out = export_hf(ckpt, tmp_path / "out")
    assert json.loads((out / "config.json").read_text()).get("dtype", "bfloat16") == "bfloat16"
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(a) == sorted(b)
    assert all(b[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- export metadata (RoPE, special tokens)


def test_export_writes_both_rope_spellings_and_runs_in_transformers(world, tmp_path):
    """transformers 4.57 / vLLM read top-level rope_theta + rope_scaling, transformers 5 rope_parameters."""
    import transformers

    from nemo_minitron.interop.hf import export_hf, import_hf

    src = make_hf_model("llama", tmp_path / "hf")  # Llama-3.1 RoPE scaling, theta 5e5
    ref = hf_logits(src)
    out = export_hf(import_hf(tmp_path / "hf", tmp_path / "ckpt"), tmp_path / "out")
    cfg = json.loads((out / "config.json").read_text())
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    assert cfg["rope_theta"] == 500000.0 and cfg["rope_scaling"] == scaling
    assert cfg["rope_parameters"] == scaling | {"rope_theta": 500000.0}
    loaded = transformers.AutoConfig.from_pretrained(str(out))
    params = getattr(loaded, "rope_parameters", None) or (loaded.rope_scaling | {"rope_theta": loaded.rope_theta})
    assert params["rope_theta"] == 500000.0 and params["rope_type"] == "llama3" and params["factor"] == 8.0
    assert torch.equal(hf_logits(out), ref)

    make_hf_model("qwen2", tmp_path / "q")
    plain = export_hf(import_hf(tmp_path / "q", tmp_path / "qc"), tmp_path / "qo")
    qcfg = json.loads((plain / "config.json").read_text())
    assert qcfg["rope_theta"] == 1000000.0 and qcfg["rope_scaling"] is None
    assert qcfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 1000000.0}


def test_special_tokens_survive_a_resave_without_hf_metadata(world, tmp_path):
    """A step that drops the import's hf metadata (prune, distill, re-save) still exports the source's ids,
    read from the carried tokenizer's generation_config.json; not Llama's defaults 1/2."""
    from nemo_minitron.checkpoint import read_metadata
    from nemo_minitron.interop.convert import convert

    make_hf_model("llama_tied", tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg.update(bos_token_id=0, eos_token_id=0, pad_token_id=None)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "hf" / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 0}))
    first = convert(tmp_path / "hf", "hf", tmp_path / "m1", "megatron")
    again = convert(first, "megatron", tmp_path / "m2", "megatron")
    assert "hf" not in (read_metadata(again).get("extra") or {})
    out = convert(again, "megatron", tmp_path / "out", "hf")
    got = json.loads((out / "config.json").read_text())
    assert (got["bos_token_id"], got["eos_token_id"], got["pad_token_id"]) == (0, 0, None)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 0


def test_generation_config_written_from_source_ids(world, tmp_path):
    from nemo_minitron.interop.hf import export_hf, import_hf

    make_hf_model("qwen3", tmp_path / "hf")
    (tmp_path / "hf" / "generation_config.json").unlink(missing_ok=True)
    out = export_hf(import_hf(tmp_path / "hf", tmp_path / "ckpt"), tmp_path / "out")
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (1, 2)


def test_remote_code_of_unsupported_architecture_never_runs(tmp_path):
    from nemo_minitron.interop.hf import read_hf_config

    marker = tmp_path / "ran"
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    (tmp_path / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    with pytest.raises(ConfigError, match="model_type='evil' is not supported.*no code shipped"):
        read_hf_config(tmp_path, trust_remote_code=True)
    assert not marker.exists()
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        read_hf_config(tmp_path)


def test_every_family_has_one_adapter_and_round_trips_its_config():
    """Each registered HF family translates its own config.json both ways (transformers' config as the reference)."""
    from transformers import AutoConfig

    from nemo_minitron.interop.hf import ARCHITECTURES, hf_config_from_model_config, model_config_from_hf
    from nemo_minitron.interop.hf_families import FAMILIES

    assert set(FAMILIES) == set(ARCHITECTURES) == {"llama", "mistral", "qwen2", "qwen3"}
    for model_type, fam in FAMILIES.items():
        ref = AutoConfig.for_model(model_type, vocab_size=256, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4, head_dim=8,
                                   max_position_embeddings=128)
        cfg, info = model_config_from_hf(ref.to_dict())
        assert info["model_type"] == model_type and cfg.qk_layernorm is fam.qk_layernorm
        assert cfg.add_qkv_bias is (model_type == "qwen2")
        back = hf_config_from_model_config(cfg, model_type=model_type)
        assert back.architectures == [fam.architecture] and back.model_type == model_type
        assert model_config_from_hf(back.to_dict())[0] == cfg
