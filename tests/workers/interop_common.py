"""Shared helpers of the interop tests: tiny random transformers models, a tiny tokenizer, logits."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

VOCAB = 128
TOKENS = torch.tensor([[5, 17, 99, 3, 64, 21, 7, 120, 33, 2, 45, 81],
                       [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 127]])

_BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.1)

#: kind -> (transformers config class name, kwargs). Each exercises one mapping feature.
KINDS = {
    # Llama-3.1 style: GQA, llama3 RoPE scaling, untied
    "llama": ("LlamaConfig", dict(_BASE, rope_theta=500000.0, max_position_embeddings=16384,
                                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    # Llama-3.2 / SmolLM2 style: tied embeddings
    "llama_tied": ("LlamaConfig", dict(_BASE, tie_word_embeddings=True, rope_theta=100000.0)),
    # Mistral-NeMo style: explicit head_dim (24) != hidden / heads (8)
    "mistral": ("MistralConfig", dict(_BASE, head_dim=24, sliding_window=None)),
    # Qwen2/2.5: QKV bias
    "qwen2": ("Qwen2Config", dict(_BASE, rope_theta=1000000.0)),
    # Qwen3: qk-norm, explicit head_dim
    "qwen3": ("Qwen3Config", dict(_BASE, head_dim=16)),
    # a hand-built pruned shape: hidden 48, ffn 72 (odd multiple), 6 heads / 2 groups, head_dim 20, 3 layers
    "pruned": ("LlamaConfig", dict(_BASE, hidden_size=48, intermediate_size=72, num_attention_heads=6,
                                   num_key_value_heads=2, head_dim=20, num_hidden_layers=3)),
}


def make_tokenizer(directory: Path) -> None:
    """A tiny word-level tokenizer (VOCAB ids) saved as Hugging Face files."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(directory))


def make_hf_model(kind: str, directory: Path, seed: int = 0, max_shard_size: str = "5GB", **config):
    """Create, randomise (norms and biases too) and save a tiny transformers model; return it (fp32, eval).

    ``config``: config fields that replace the kind's."""
    import transformers
    from transformers import AutoModelForCausalLM

    cls_name, kwargs = KINDS[kind]
    cfg = getattr(transformers, cls_name)(**(kwargs | config), bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))  # a dropped norm must change the logits
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(directory), max_shard_size=max_shard_size)
    make_tokenizer(directory)
    return model


@torch.no_grad()
def hf_logits(model_or_dir, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    """fp32 logits of a transformers model (or a saved directory)."""
    from transformers import AutoModelForCausalLM

    from nemo_minitron.interop.gguf import dtype_kwarg

    model = model_or_dir
    if not isinstance(model, torch.nn.Module):
        model = AutoModelForCausalLM.from_pretrained(str(model_or_dir), **dtype_kwarg(torch.float32)).eval()
    return model(tokens).logits.float()


def megatron_logits(ckpt: Path, tp: int = 1, pp: int = 1, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    """Full logits of a nemo_minitron checkpoint loaded at TP × PP (collective)."""
    from nemo_minitron import runtime
    from nemo_minitron.checkpoint import load_checkpoint, load_model_config
    from nemo_minitron.models.builder import build_gpt_model
    from nemo_minitron.models.forward import forward_logits

    cfg = load_model_config(ckpt).replace(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    runtime.init_model_parallel(tp, pp, seed=1)
    model = build_gpt_model(cfg)
    load_checkpoint(model, cfg, ckpt)
    return forward_logits(model, tokens)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def make_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A tiny random Llama GGUF (F32 tensors, byte-level BPE tokenizer) written with the `gguf` package."""
    import gguf
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    layers, hidden, ffn, heads, kv_heads, head_dim = 2, 64, 96, 8, 4, 8
    b2u = bytes_to_unicode()
    tokens = [b2u[i] for i in range(256)] + ["<s>", "</s>", "Ġt", "he"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * 256 + [3, 3, 1, 1])
    w.add_token_merges(["Ġ t", "h e"])
    w.add_bos_token_id(256)
    w.add_eos_token_id(257)
    rng = np.random.default_rng(seed)

    def add(name, shape, norm=False):
        a = 1 + 0.2 * rng.standard_normal(shape) if norm else 0.1 * rng.standard_normal(shape)
        w.add_tensor(name, a.astype(np.float32))

    add("token_embd.weight", (len(tokens), hidden))
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", (hidden,), True)
        add(f"blk.{i}.attn_q.weight", (heads * head_dim, hidden))
        add(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden))
        add(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden))
        add(f"blk.{i}.attn_output.weight", (hidden, heads * head_dim))
        add(f"blk.{i}.ffn_norm.weight", (hidden,), True)
        add(f"blk.{i}.ffn_gate.weight", (ffn, hidden))
        add(f"blk.{i}.ffn_up.weight", (ffn, hidden))
        add(f"blk.{i}.ffn_down.weight", (hidden, ffn))
    add("output_norm.weight", (hidden,), True)
    add("output.weight", (len(tokens), hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
