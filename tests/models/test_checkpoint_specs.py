"""One loader for local-spec and Transformer Engine checkpoints (issue 9 found 3), and NeMo ``common.pt`` entries.

Under TE, norms that are not fused into a linear (``TENorm``: the final norm, qk-norms) carry an
``_extra_state`` (FP8 metadata) that the local spec's norms lack. TE cannot run on CPU, so the test
gives the real final norm of a megatron-core model TE's extra-state behaviour
(``get_extra_state``/``set_extra_state``) in a subclass; megatron-core's own ``sharded_state_dict``
then asks for — and saves — the ``ShardedObject`` exactly as it does for a ``TENorm``.
"""

from __future__ import annotations

import pytest
import torch

from nemo_minitron.checkpoint import CheckpointError, UnmatchedKeysError, load_checkpoint, save_checkpoint
from nemo_minitron.models import names

pytestmark = pytest.mark.compat  # megatron-core's sharded_state_dict / _extra_state handling differs by release

TOKENS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]])
TE_NORM_EXTRA = "decoder.final_layernorm._extra_state"


def _with_te_extra_state(model):
    """Give the final norm TE's FP8 ``_extra_state`` (a serialized byte tensor), as a ``TENorm`` has."""
    norm = model.decoder.final_layernorm

    class TEStyleNorm(type(norm)):
        def get_extra_state(self):
            return torch.frombuffer(bytearray(b"fp8-meta"), dtype=torch.uint8).clone()

        def set_extra_state(self, state):
            self.loaded_extra_state = state

    norm.__class__ = TEStyleNorm
    return model


def _model(cfg, seed, te_extra=False):
    from nemo_minitron.models.builder import build_gpt_model
    from nemo_minitron.runtime import seed_everything

    seed_everything(seed)
    model = build_gpt_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return _with_te_extra_state(model) if te_extra else model


def _logits(model):
    from nemo_minitron.models.forward import forward_logits

    return forward_logits(model, TOKENS)


def _sharded_objects(model) -> set[str]:
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return {sh.key for sh in model.sharded_state_dict(prefix="").values() if isinstance(sh, ShardedObject)}


def _drop_checksums(ckpt):
    """The tests rewrite weights/ by hand: forget the recorded file checksums."""
    import json

    meta_file = ckpt / "nemo_minitron.json"
    meta = json.loads(meta_file.read_text())
    meta.pop("checksums", None)
    meta_file.write_text(json.dumps(meta))


@pytest.fixture()
def cfg(tiny_cfg):
    return tiny_cfg.replace(num_layers=2)


def test_te_model_asks_for_extra_state_the_local_checkpoint_lacks(world, cfg):
    assert TE_NORM_EXTRA in _sharded_objects(_model(cfg, 1, te_extra=True))
    assert TE_NORM_EXTRA not in _sharded_objects(_model(cfg, 1))


def test_local_checkpoint_loads_into_te_model(world, cfg, tmp_path):
    src = _model(cfg, 1)
    ref = _logits(src)
    path = save_checkpoint(src, cfg, tmp_path / "local")
    te = _model(cfg, 2, te_extra=True)
    assert (_logits(te) - ref).abs().max() > 1e-2
    load_checkpoint(te, cfg, path)  # before: "failed to read weights" (missing final_layernorm._extra_state)
    assert torch.equal(_logits(te), ref)


def test_te_checkpoint_with_extra_state_objects_loads_into_local_model(world, cfg, tmp_path):
    from megatron.core.dist_checkpointing.serialization import load_sharded_metadata

    src = _model(cfg, 1, te_extra=True)
    ref = _logits(src)
    path = save_checkpoint(src, cfg, tmp_path / "te")
    stored = load_sharded_metadata(str(path / "weights"))
    assert TE_NORM_EXTRA in {v.key for v in stored.values()}  # the checkpoint really carries TE's ShardedObjects
    local = _model(cfg, 2)
    load_checkpoint(local, cfg, path)
    assert torch.equal(_logits(local), ref)


def test_missing_weight_is_refused_loudly(world, cfg, tmp_path):
    from megatron.core import dist_checkpointing

    src = _model(cfg, 1, te_extra=True)
    ckpt = save_checkpoint(src, cfg, tmp_path / "ckpt")
    weights = ckpt / "weights"
    for f in weights.iterdir():
        f.unlink()
    sd = {k: v for k, v in src.sharded_state_dict(prefix="").items()
          if getattr(v, "key", "") != "decoder.layers.mlp.linear_fc1.layer_norm_weight"}
    dist_checkpointing.save(sd, str(weights))
    _drop_checksums(ckpt)
    with pytest.raises(UnmatchedKeysError, match="decoder.layers.mlp.linear_fc1.layer_norm_weight"):
        load_checkpoint(_model(cfg, 2), cfg, ckpt)
    assert issubclass(UnmatchedKeysError, CheckpointError)


def test_common_pt_entries_do_not_break_a_strict_load(world, cfg, tmp_path):
    """NeMo writes run metadata into common.pt; dist_checkpointing.load merges it into the loaded dict."""
    from megatron.core import dist_checkpointing

    src = _model(cfg, 1)
    ref = _logits(src)
    ckpt = save_checkpoint(src, cfg, tmp_path / "ckpt")
    weights = ckpt / "weights"
    for f in weights.iterdir():
        f.unlink()
    sd = src.sharded_state_dict(prefix="")
    sd.update(checkpoint_version=3.0, content_metadata={"singleton_local_shards": False},
              optimizer_states=[{"param_groups": []}])
    dist_checkpointing.save(sd, str(weights))
    _drop_checksums(ckpt)
    assert "checkpoint_version" in dist_checkpointing.load_common_state_dict(str(weights))
    fresh = _model(cfg, 2)
    load_checkpoint(fresh, cfg, ckpt, strict=True)  # before: "unexpected keys ['checkpoint_version', ...]"
    assert torch.equal(_logits(fresh), ref)


def test_unfused_norm_names_in_a_dist_checkpoint_load(world, cfg, tmp_path):
    """A checkpoint written with local names (other tools) loads through the same table."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    src = _model(cfg, 1)
    ref = _logits(src)
    ckpt = save_checkpoint(src, cfg, tmp_path / "ckpt")
    weights = ckpt / "weights"
    for f in weights.iterdir():
        f.unlink()
    sd = {}
    for k, sh in src.sharded_state_dict(prefix="").items():
        if isinstance(sh, ShardedObject):
            continue
        sh.key = names.to_local(sh.key)
        sd[k] = sh
    assert any(sh.key.endswith("input_layernorm.weight") for sh in sd.values())
    dist_checkpointing.save(sd, str(weights))
    _drop_checksums(ckpt)
    fresh = _model(cfg, 2, te_extra=True)
    load_checkpoint(fresh, cfg, ckpt)
    assert torch.equal(_logits(fresh), ref)
