"""Our NeMo plugin against real NeMo 2.7.3: the ``minitron://`` importer / exporter of ``llm.import_ckpt`` /
``llm.export_ckpt``, and the ``--factory minitron`` recipes of ``nemo llm prune|distill``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workers.interop_common import TOKENS, hf_logits, make_hf_model, megatron_logits

WORKERS = Path(__file__).parent / "workers"
REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
#: our tiny HF kind -> the model class a NeMo user passes to llm.import_ckpt ("gpt": llm.GPTModel, whose import
#: takes the class the checkpoint's architecture implies), and the (model, config) classes NeMo must then load
IMPORTS = {"llama": ("llama", ("LlamaModel", "Llama31Config")), "qwen2": ("qwen2", ("Qwen2Model", "Qwen2Config")),
           "qwen3": ("qwen3", ("Qwen3Model", "Qwen3Config")),
           "mistral": ("mistral", ("MistralModel", "MistralConfig7B")), "pruned": ("gpt", ("LlamaModel", "LlamaConfig"))}


def close(got, ref, what):
    diff = (got - ref).abs().max().item()
    assert got.shape == ref.shape and diff <= 1e-5, f"{what}: {diff}"


@pytest.mark.timeout(1500)
def test_minitron_importer_and_exporter(world, tmp_path):
    """Our checkpoints of the four families and a pruned shape (head_dim 20 != 48 / 6, ffn 72) through
    ``llm.import_ckpt(model=<a released size's model>, source="minitron://CKPT")``: NeMo loads each with the class
    our architecture needs, its forward and its own HF export give transformers' logits, and
    ``llm.export_ckpt(target="minitron")`` gives them back to us (our forward) unchanged. NeMo's own HF importer
    writes the pruned shape too, and ``llm.export_ckpt(target="minitron")`` of that gives transformers' logits in
    our forward and in our HF export. A class that cannot compute the checkpoint is refused, writing nothing."""
    import torch

    from nemo_minitron.interop.convert import convert

    sources = {kind: make_hf_model(kind, tmp_path / "hf" / kind) for kind in IMPORTS}
    jobs = ["llama", tmp_path / "hf" / "pruned", tmp_path / "nemo_wrote_pruned"]
    for kind, (family, _) in IMPORTS.items():
        jobs += [family, convert(tmp_path / "hf" / kind, "hf", tmp_path / "ours" / kind, "megatron"), tmp_path / kind]
    torch.save(TOKENS, tmp_path / "tokens.pt")
    run = subprocess.run([sys.executable, str(WORKERS / "nemo_connectors.py"), str(tmp_path / "tokens.pt"),
                          str(tmp_path / "seen.json"), *map(str, jobs)], env=ENV, capture_output=True, text=True,
                         timeout=1400)
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads((tmp_path / "seen.json").read_text())
    for kind, (_, classes) in IMPORTS.items():
        ref = hf_logits(sources[kind], TOKENS)
        assert tuple(seen["classes"][kind]) == classes, kind
        close(torch.load(tmp_path / f"{kind}.nemo_logits.pt", weights_only=True), ref, f"{kind}: NeMo's forward")
        close(hf_logits(tmp_path / f"{kind}.hf", TOKENS), ref, f"{kind}: NeMo's HF export")
        close(megatron_logits(tmp_path / f"{kind}.minitron"), ref, f"{kind}: back to us")
    ref = hf_logits(sources["pruned"], TOKENS)
    close(megatron_logits(tmp_path / "nemo_wrote_pruned.minitron"), ref, "NeMo's pruned checkpoint in our forward")
    out = convert(tmp_path / "nemo_wrote_pruned.minitron", "megatron", tmp_path / "nemo_wrote_pruned_hf", "hf")
    close(hf_logits(out, TOKENS), ref, "NeMo's pruned checkpoint -> us -> HF")
    error = seen["wrong_class_error"]
    assert error and error.startswith("ConfigError: source=minitron://") and "model=llm.LlamaModel(" in error, error
    assert not seen["bad_written"]


@pytest.mark.timeout(900)
def test_minitron_recipe_factories(tmp_path):
    """``nemo llm prune --factory minitron`` (the ``nemo`` command finds it through our entry point) shows NeMo's
    ``llm.prune`` with our settings in a dry run; the distillation factory maps our recipe's optimizer, schedule,
    batch, layout and KD loss onto NeMo's distillation recipe; overrides NeMo has no counterpart for are refused.
    Both NeMo functions need GPUs (``llm.prune`` builds a GPU trainer, the distillation recipe's trainer is NeMo's
    GPU one), so no CPU run of them here: our own ``nemo minitron prune|distill`` run on CPU in the main tier."""
    factory = 'minitron(overrides="prune.ffn_hidden_size=48 prune.num_calib_size=8 prune.calib_seq_length=64")'
    run = subprocess.run([str(Path(sys.executable).with_name("nemo")), "llm", "prune", "--factory", factory,
                          "nemo_checkpoint=/ckpt/in", "save_path=/ckpt/out", "--dryrun", "-y"], env=ENV,
                         cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    table = " ".join(run.stdout.split())
    assert "Dry run for task nemo.collections.llm.api:prune" in table, run.stdout[-3000:]
    for shown in ("PruningConfig(target_ffn_hidden_size=48)", "MockDataModule(seq_length=64", "'/ckpt/in'", "│ 8 │"):
        assert shown in table, (shown, run.stdout[-3000:])

    out = tmp_path / "factories.json"
    run = subprocess.run([sys.executable, str(WORKERS / "nemo_factories.py"), str(out)], env=ENV, capture_output=True,
                         text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads(out.read_text())
    assert (seen["fn"], seen["student"], seen["teacher"]) == ("distill", "STUDENT", "TEACHER")
    assert (seen["lr"], seen["warmup"], seen["min_lr"], seen["weight_decay"]) == (3e-4, 2, 1e-5, 0.1)
    assert seen["betas"] == [0.9, 0.95] and (seen["max_steps"], seen["tp"], seen["devices"]) == (16, 2, 2)
    assert seen["data"] == "MockDataModule" and seen["batch"] == [128, 2, 4]
    assert seen["kd"] == [False, 1.0, ["output_layer", "output_layer"]] and seen["default_kd_yaml"] == "kd_logits.yaml"
    assert seen["prune"] == {"fn": "prune", "targets": {"target_hidden_size": 32, "target_num_layers": 1}}
    assert seen["prune_refused"].startswith("ConfigError: prune.target_params=1000 has no counterpart")
    assert seen["distill_refused"].startswith("ConfigError: kd.temperature=2.0 has no counterpart")


@pytest.mark.timeout(900)
def test_recipe_extension_example(world, tmp_path):
    """examples/nemo_recipe_extension.py on a tiny NeMo 2 checkpoint (the pruned shape, head_dim 20): our pruning
    stage, ``minitron://`` back into NeMo (NeMo reads the pruned shape from its context) and NeMo's distillation
    recipe as a dry run; ``nemo llm export target=minitron`` (the ``nemo`` command, which loads our entry point)
    turns the NeMo 2 checkpoint it wrote back into ours, computing what our pruned checkpoint computes."""
    import torch

    from nemo_minitron.interop.convert import convert

    make_hf_model("pruned", tmp_path / "hf")
    teacher = convert(tmp_path / "hf", "hf", tmp_path / "teacher", "nemo2")
    torch.manual_seed(0)
    tokens = torch.randint(3, 128, (48, 16))
    torch.save({"tokens": tokens, "mask": torch.ones_like(tokens)}, tmp_path / "calib.pt")
    prune = (f"prune.ffn_hidden_size=36 prune.calib_data={tmp_path / 'calib.pt'} prune.num_calib_size=8 "
             "prune.calib_seq_length=16 prune.plot=false")
    run = subprocess.run([sys.executable, str(REPO / "examples" / "nemo_recipe_extension.py"), "--nemo-checkpoint",
                          str(teacher), "--work-dir", str(tmp_path / "work"), "--prune", prune, "--distill",
                          "trainer.max_steps=4 model.global_batch_size=2 model.encoder_seq_length=16"], env=ENV,
                         cwd=tmp_path, capture_output=True, text=True, timeout=800)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["nemo_config_class"] == "LlamaConfig" and seen["distill_recipe"] == "distill"
    shape = {"num_layers": 3, "hidden_size": 48, "ffn_hidden_size": 36, "num_attention_heads": 6,
             "num_query_groups": 2, "kv_channels": 20}
    assert {k: seen[k] for k in shape} == shape
    assert "Dry run for task nemo.collections.llm.api:distill" in " ".join(run.stdout.split())
    back = tmp_path / "back"
    run = subprocess.run([sys.executable, str(WORKERS / "nemo_cli.py"), "llm", "export", f"path={seen['pruned_nemo2']}",
                          "target=minitron", f"output_path={back}", "-y"], env=ENV, cwd=tmp_path, capture_output=True,
                         text=True, timeout=400)
    assert run.returncode == 0 and (back / "COMPLETE").is_file(), (run.stdout + run.stderr)[-4000:]
    close(megatron_logits(back), megatron_logits(Path(seen["pruned"])), "the pruned NeMo 2 checkpoint")
