"""Against real NeMo 2.7.3 (transformers 4.57, megatron-core 0.15.3): our NeMo 2 / NeMo 1 checkpoints as NeMo
reads them, HF exports as transformers 4.57 runs them, and the ``nemo minitron`` command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workers.interop_common import TOKENS, hf_logits, make_hf_model

WORKER = Path(__file__).parent / "workers" / "nemo_side.py"
IMPORTER = Path(__file__).parent / "workers" / "nemo_import.py"
EXPORTER = Path(__file__).parent / "workers" / "nemo_export.py"
REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))


@pytest.mark.timeout(1200)
def test_nemo_reads_our_nemo2_context_and_nemo1_file(world, tmp_path):
    from nemo_minitron.interop.convert import convert

    make_hf_model("pruned", tmp_path / "hf")  # head_dim 20 != 48 / 6, GQA 6/2, 3 layers
    mega = convert(tmp_path / "hf", "hf", tmp_path / "mega", "megatron")
    nemo2 = convert(mega, "megatron", tmp_path / "n2", "nemo2")
    nemo1 = convert(mega, "megatron", tmp_path / "n1.nemo", "nemo")
    out = tmp_path / "seen.json"
    run = subprocess.run([sys.executable, str(WORKER), str(nemo2), str(nemo1), str(out)], env=ENV,
                         capture_output=True, text=True, timeout=1100)
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads(out.read_text())
    assert seen["fiddle_root"] == "nemo.lightning.io.pl.TrainerContext"
    assert seen["nemo2_config_class"] == "nemo.collections.llm.gpt.model.llama.LlamaConfig"
    shape = {"num_layers": 3, "hidden_size": 48, "ffn_hidden_size": 72, "num_attention_heads": 6,
             "num_query_groups": 2, "kv_channels": 20}
    assert seen["nemo2_config"] | shape == seen["nemo2_config"]
    assert seen["nemo2_config"]["vocab_size"] == 128 and seen["nemo2_activation"] == "silu"
    assert seen["nemo2_tokenizer_ids"] == [5, 17, 99]
    assert seen["nemo1_config"] | shape == seen["nemo1_config"] and seen["nemo1_config"]["activation"] == "fast-swiglu"
    # same weights: every tensor of our checkpoint is what NeMo's reader returns (layers stacked on dim 0)
    import torch

    from nemo_minitron.checkpoint import load_checkpoint, load_model_config
    from nemo_minitron.models import names
    from nemo_minitron.models.builder import build_gpt_model

    nemo_weights = torch.load(out.with_suffix(".pt"), weights_only=True)
    cfg = load_model_config(mega)
    model = build_gpt_model(cfg)
    load_checkpoint(model, cfg, mega)
    ours = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor) and "_extra_state" not in k}
    seen_keys = set()
    for name, value in ours.items():
        layer = re.match(r"decoder\.layers\.(\d+)\.(.*)", name)
        key = f"model.decoder.layers.{layer.group(2)}" if layer else f"model.{name}"
        if key not in nemo_weights:  # NeMo's TE names: norms fused into the next linear
            key = names.to_te(key.removeprefix("model.")).join(("model.", ""))
        got = nemo_weights[key][int(layer.group(1))] if layer else nemo_weights[key]
        assert torch.equal(got, value), name
        seen_keys.add(key)
    assert seen_keys == set(nemo_weights), set(nemo_weights) ^ seen_keys


#: our tiny HF kind -> (the NeMo family whose HF importer writes it, config fields changed). Qwen3 with head_dim
#: 128 as every released Qwen3: NeMo 2.7.3's Qwen3 importer ignores HF's head_dim (its kv_channels default is 128).
NEMO_IMPORTS = {"llama": ("llama", {}), "llama_tied": ("llama", {}), "qwen2": ("qwen2", {}),
                "qwen3": ("qwen3", {"head_dim": 128}), "mistral": ("mistral", {})}


@pytest.mark.timeout(1500)
def test_checkpoints_nemo_writes_convert_to_hf_exactly(world, tmp_path):
    """NeMo's own HF importers (``llm.import_ckpt``) write NeMo 2 checkpoints of Llama-3.1 (RoPE scaling), Llama
    with tied embeddings, Qwen2 (QKV bias), Qwen3 (QK norm) and Mistral; we convert each to HF and transformers 4.57
    gives the source's logits. NeMo's checkpoints carry trainer state in ``weights/common.pt``."""
    import torch
    import transformers

    from nemo_minitron.interop.convert import convert

    sources = {kind: make_hf_model(kind, tmp_path / "hf" / kind, **config)
               for kind, (_, config) in NEMO_IMPORTS.items()}
    jobs = [a for kind, (family, _) in NEMO_IMPORTS.items() for a in (family, tmp_path / "hf" / kind, tmp_path / kind)]
    run = subprocess.run([sys.executable, str(IMPORTER), *map(str, jobs)], env=ENV, capture_output=True, text=True,
                         timeout=1400)
    assert run.returncode == 0, run.stderr[-4000:]
    for kind, src in sources.items():
        nemo2 = tmp_path / kind
        assert (nemo2 / "context" / "io.json").is_file()
        assert "global_step" in torch.load(nemo2 / "weights" / "common.pt", weights_only=True)
        out = convert(nemo2, "nemo2", tmp_path / f"{kind}_hf", "hf")
        diff = (hf_logits(out, TOKENS) - hf_logits(src, TOKENS)).abs().max().item()
        assert diff <= 1e-5, f"{kind}: {diff}"
        loaded = transformers.AutoConfig.from_pretrained(str(out))
        assert loaded.rope_theta == src.config.rope_theta, kind
        assert getattr(loaded, "rope_scaling", None) == getattr(src.config, "rope_scaling", None), kind
        assert (loaded.bos_token_id, loaded.eos_token_id) == (1, 2), kind
        assert loaded.tie_word_embeddings == src.config.tie_word_embeddings, kind


@pytest.mark.timeout(1500)
def test_nemo_loads_runs_and_exports_our_nemo2_checkpoints(world, tmp_path):
    """Our NeMo 2 exports of the four families and a pruned shape (head_dim 20 != 48 / 6): NeMo's
    ``llm.export_ckpt(target="hf")`` loads each (io.json, its model class, its dist-ckpt loader), the model it
    loaded gives the source's logits, and the HF checkpoint NeMo's exporter writes does too."""
    import torch

    from nemo_minitron.interop.convert import convert

    kinds = ("llama", "llama_tied", "qwen2", "qwen3", "mistral", "pruned")
    sources = {kind: make_hf_model(kind, tmp_path / "hf" / kind) for kind in kinds}
    jobs = []
    for kind in kinds:
        jobs += [convert(tmp_path / "hf" / kind, "hf", tmp_path / kind, "nemo2"), tmp_path / "out" / kind]
    torch.save(TOKENS, tmp_path / "tokens.pt")
    run = subprocess.run([sys.executable, str(EXPORTER), str(tmp_path / "tokens.pt"), *map(str, jobs)], env=ENV,
                         capture_output=True, text=True, timeout=1400)
    assert run.returncode == 0, run.stderr[-4000:]
    for kind, src in sources.items():
        ref = hf_logits(src, TOKENS)
        nemo = torch.load(tmp_path / "out" / f"{kind}.nemo_logits.pt", weights_only=True)
        assert nemo.shape == ref.shape, kind
        assert (nemo - ref).abs().max().item() <= 1e-5, f"{kind} NeMo forward: {(nemo - ref).abs().max().item()}"
        exported = hf_logits(tmp_path / "out" / kind, TOKENS)
        assert (exported - ref).abs().max().item() <= 1e-5, f"{kind} NeMo's HF export"


def test_hf_export_runs_right_under_transformers_4_57(world, tmp_path):
    """Llama-3.1 RoPE scaling + tied embeddings and Mistral: exported config.json read by transformers 4.57."""
    import transformers

    from nemo_minitron.interop.convert import convert

    assert transformers.__version__.startswith("4.57")
    for kind in ("llama", "llama_tied", "mistral"):
        src = make_hf_model(kind, tmp_path / kind)
        ref = hf_logits(src, TOKENS)
        out = convert(tmp_path / kind, "hf", tmp_path / f"{kind}_out", "hf")
        loaded = transformers.AutoConfig.from_pretrained(str(out))
        assert loaded.rope_theta == src.config.rope_theta
        assert getattr(loaded, "rope_scaling", None) == getattr(src.config, "rope_scaling", None)
        diff = (hf_logits(out, TOKENS) - ref).abs().max().item()
        assert diff <= 1e-5, f"{kind}: {diff}"


@pytest.mark.timeout(900)
def test_nemo_command_lists_minitron(tmp_path):
    run = subprocess.run([str(Path(sys.executable).with_name("nemo")), "minitron", "--help"], env=ENV, cwd=tmp_path,
                         capture_output=True, text=True, timeout=850)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "prune" in run.stdout and "distill" in run.stdout and "Minitron width/depth pruning" in run.stdout
