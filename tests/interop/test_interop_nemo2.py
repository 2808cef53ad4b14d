"""NeMo 2 directories without NeMo installed: trainer state in common.pt, tokenizers the context names, io.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tests.workers.interop_common import hf_logits, make_hf_model

REPO = Path(__file__).resolve().parents[2]


def _add_trainer_state(nemo: Path) -> None:
    """Rewrite weights/ the way NeMo saves it: the same tensors plus Lightning's trainer state in common.pt."""
    from megatron.core import dist_checkpointing

    from nemo_minitron.interop.nemo2 import PREFIX
    from nemo_minitron.interop.te_names import checkpoint_tensor_keys

    keys = checkpoint_tensor_keys(nemo / "weights")
    state = dist_checkpointing.load_plain_tensors(str(nemo / "weights"))
    assert set(state) == set(keys) and all(k.startswith(PREFIX) for k in keys)
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    sharded = {k: ShardedTensor.from_rank_offsets(k, v.contiguous(), replica_id=0) for k, v in state.items()}
    trainer_state = {"epoch": 0, "global_step": 12, "pytorch-lightning_version": "2.5.0", "loops": {"fit": {}},
                     "callbacks": {"ModelCheckpoint": {}}, "optimizer_states": [], "lr_schedulers": [],
                     "content_metadata": {"singleton_local_shards": False}}
    shutil.rmtree(nemo / "weights")
    (nemo / "weights").mkdir()
    dist_checkpointing.save(sharded | trainer_state, str(nemo / "weights"))
    assert torch.load(nemo / "weights" / "common.pt", weights_only=True)["global_step"] == 12


def test_nemo2_with_trainer_state_and_renamed_tokenizer(world, tmp_path):
    """A NeMo-written directory: trainer state in common.pt (was UnmatchedKeysError), tokenizer under another
    name that only io.json names, no model.yaml; bos/eos/pad and generation_config come from the tokenizer."""
    from nemo_minitron.interop.convert import convert

    src = make_hf_model("qwen2", tmp_path / "hf")
    ref = hf_logits(src)
    nemo = convert(tmp_path / "hf", "hf", tmp_path / "nemo2", "nemo2")
    _add_trainer_state(nemo)
    ctx = nemo / "context"
    (ctx / "nemo_tokenizer").rename(ctx / "my_tok")
    io = (ctx / "io.json").read_text()
    assert io.count('"nemo_tokenizer"') == 1
    (ctx / "io.json").write_text(io.replace('"nemo_tokenizer"', '"my_tok"'))
    (ctx / "model.yaml").unlink()
    (ctx / "my_tok" / "generation_config.json").unlink(missing_ok=True)
    (ctx / "artifacts").mkdir(exist_ok=True)
    (ctx / "artifacts" / "generation_config.json").write_text(json.dumps({"bos_token_id": 7, "eos_token_id": 9}))

    back = convert(nemo, "nemo2", tmp_path / "hf_back", "hf")
    assert torch.equal(hf_logits(back), ref)
    cfg = json.loads((back / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and (cfg["bos_token_id"], cfg["eos_token_id"]) == (7, 9)
    assert json.loads((back / "generation_config.json").read_text())["eos_token_id"] == 9
    assert (back / "tokenizer.json").is_file()


def test_io_json_is_a_trainer_context_of_the_model(world, tmp_path):
    from nemo_minitron.interop.convert import convert
    from nemo_minitron.interop.fiddle_json import read_fiddle_json

    make_hf_model("pruned", tmp_path / "hf")  # head_dim 20 != 48 / 6, 3 layers, GQA 6/2
    nemo = convert(tmp_path / "hf", "hf", tmp_path / "nemo2", "nemo2")
    doc = json.loads((nemo / "context" / "io.json").read_text())
    assert doc["version"] == "0.0.1" and set(doc) == {"root", "objects", "refcounts", "version"}
    root = read_fiddle_json(doc)
    assert root["_target_"] == "nemo.lightning.io.pl.TrainerContext"
    assert root["trainer"] == {"_target_": "nemo.lightning.pytorch.trainer.Trainer"} and root["extra"] == {}
    model = root["model"]
    assert model["_target_"] == "nemo.collections.llm.gpt.model.llama.LlamaModel"
    c = model["config"]
    assert c["_target_"] == "nemo.collections.llm.gpt.model.llama.LlamaConfig"
    assert (c["num_layers"], c["hidden_size"], c["ffn_hidden_size"]) == (3, 48, 72)
    assert (c["num_attention_heads"], c["num_query_groups"], c["kv_channels"]) == (6, 2, 20)
    assert c["activation_func"] == "torch.nn.functional.silu"
    assert model["tokenizer"]["pretrained_model_name"] == "nemo_tokenizer"
    paths = {p for o in doc["objects"].values() for p in o.get("paths", [])}
    assert {"<root>.model", "<root>.model.config", "<root>.model.tokenizer"} <= paths


def test_fiddle_json_reads_nested_containers():
    from nemo_minitron.interop.fiddle_json import Call, PyRef, fiddle_json, read_fiddle_json

    doc = fiddle_json(Call("a.B", {"x": 1, "f": PyRef("m.n.g"), "c": Call("a.C"), "d": {}}))
    assert read_fiddle_json(doc) == {"_target_": "a.B", "x": 1, "f": "m.n.g", "c": {"_target_": "a.C"}, "d": {}}
    tuple_ref = {"type": {"type": "pyref", "module": "builtins", "name": "tuple"},
                 "items": [["Index(index=0)", "k"]], "metadata": None}
    nonempty = {"root": {"type": {"type": "pyref", "module": "builtins", "name": "dict"},
                         "items": [["Key(key='k')", {"type": "leaf", "value": 3}]], "metadata": tuple_ref}}
    assert read_fiddle_json(nonempty) == {"k": 3}
