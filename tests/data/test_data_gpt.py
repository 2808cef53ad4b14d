"""megatron GPTDatasets from our preprocessed data: splits, determinism, resume order, DP sharding."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from nemo_minitron.config.model import ConfigError
from nemo_minitron.data.gpt_data import DataConfig, PretrainingBatchSampler, build_dataloader, build_datasets
from nemo_minitron.data.integrity import DataIntegrityError
from nemo_minitron.data.preprocess import preprocess_corpus
from tests.fixtures import corpus as C
from tests.launch import torchrun

WORKER = Path(__file__).parents[1] / "workers" / "data_dp.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt")
    wt = C.write_wikitext_dir(root / "wt", 50, 4, 4, seed=11)
    arts = C.make_articles(58, seed=11)
    tok = C.train_bpe_tokenizer([C.wikitext_text(arts)], root / "tok")
    out = preprocess_corpus(wt, tok, root / "ds" / "wt", workers=1, progress=False)
    return dict(root=root, tok=tok, train=out["train"].prefix, valid=out["valid"].prefix)


def _cfg(data, name, **kw):
    return DataConfig(**({"data_prefix": [data["train"]], "split": "90,5,5", "seq_length": 32,
                          "index_cache_dir": str(data["root"] / name)} | kw))


def _digest(batch) -> list[str]:
    return [hashlib.sha1(t.numpy().tobytes()).hexdigest()[:12] for t in batch["tokens"]]


def test_samples_and_determinism(world, data):
    train, valid, test = build_datasets(_cfg(data, "c1"), {"train": 64, "valid": 8, "test": 8})
    assert len(train) >= 64 and len(valid) >= 8 and len(test) >= 8
    s = train[0]
    assert set(s) == {"tokens", "labels", "loss_mask", "position_ids"}
    assert s["tokens"].shape == (32,) and torch.equal(s["tokens"][1:], s["labels"][:-1])
    assert torch.equal(s["position_ids"], torch.arange(32)) and bool((s["loss_mask"] == 1).all())
    # A fresh build (new cache dir) with the same seed gives the same samples; another seed does not.
    again, _, _ = build_datasets(_cfg(data, "c2"), {"train": 64, "valid": 8, "test": 8}, tokenizer=data["tok"])
    assert all(torch.equal(train[i]["tokens"], again[i]["tokens"]) for i in range(len(train)))
    other, _, _ = build_datasets(_cfg(data, "c3", seed=99), {"train": 64, "valid": 8, "test": 8})
    assert not all(torch.equal(train[i]["tokens"], other[i]["tokens"]) for i in range(8))


def test_resume_order_and_dp_sharding(world, data):
    train, _, _ = build_datasets(_cfg(data, "c1"), {"train": 64, "valid": 8, "test": 8})
    mbs = 2
    full = [d for b in build_dataloader(train, mbs, 0, 1) for d in _digest(b)]
    # Resume after 5 micro-batches: exactly the rest of the sequence.
    resumed = [d for b in build_dataloader(train, mbs, 0, 1, consumed_samples=10) for d in _digest(b)]
    assert resumed == full[10:]
    # Two DP ranks: disjoint, and interleaved they are the single-rank order (megatron's global batches).
    r0 = [_digest(b) for b in build_dataloader(train, mbs, 0, 2)]
    r1 = [_digest(b) for b in build_dataloader(train, mbs, 1, 2)]
    assert len(r0) == len(r1) == len(train) // (2 * mbs)
    assert not set(sum(r0, [])) & set(sum(r1, []))
    assert sum((a + b for a, b in zip(r0, r1)), []) == full[:len(r0) * 2 * mbs]
    # Resuming a DP rank mid-way continues its own shard.
    r1_resumed = [_digest(b) for b in build_dataloader(train, mbs, 1, 2, consumed_samples=3 * 2 * mbs)]
    assert r1_resumed == r1[3:]
    with pytest.raises(ConfigError, match="consumed_samples"):
        build_dataloader(train, mbs, 0, 1, consumed_samples=len(train))


def test_sampler_partial_batches():
    s = PretrainingBatchSampler(10, 0, 2, 1, 2, drop_last=False)
    assert list(s) == [[2, 3], [6, 7]] and len(s) == 2
    s = PretrainingBatchSampler(11, 0, 2, 0, 2, drop_last=False)
    assert list(s) == [[0, 1], [4, 5], [8, 9]] and len(s) == 3
    with pytest.raises(ConfigError, match="dp_rank=2"):
        PretrainingBatchSampler(10, 0, 2, 2, 2)


def test_blend_and_validation_errors(world, data):
    blend = _cfg(data, "blend", data_prefix=[0.75, data["train"], 0.25, data["train"]])
    train, valid, _ = build_datasets(blend, {"train": 40, "valid": 4, "test": 4})
    assert len(train) == 40 and type(train).__name__ == "BlendedDataset"
    # The 4-document valid dataset cannot give 1% to valid: clear error instead of megatron's endless loop.
    with pytest.raises(ConfigError, match=r"data.split='98,1,1' gives the valid split 0 of the 4 documents"):
        build_datasets(_cfg(data, "e", data_prefix=[data["valid"]], split="98,1,1"), {"train": 4})
    with pytest.raises(ConfigError, match="data.data_prefix"):
        build_datasets(_cfg(data, "e", data_prefix=[0.5, data["train"], 0.5]), {"train": 4})
    with pytest.raises(ConfigError, match="data.split='a,b'"):
        build_datasets(_cfg(data, "e", split="a,b"), {"train": 4})
    with pytest.raises(ConfigError, match="unknown keys"):
        build_datasets(_cfg(data, "e"), {"training": 4})
    with pytest.raises(DataIntegrityError, match="missing"):
        build_datasets(_cfg(data, "e", data_prefix=[data["train"] + "_nope"]), {"train": 4})
    small = C.train_bpe_tokenizer(["tiny corpus text"], data["root"] / "small_tok", vocab_size=300)
    with pytest.raises(DataIntegrityError, match=r"400-token vocabulary, larger than the tokenizer's/model's \d+"):
        build_datasets(_cfg(data, "e"), {"train": 4}, tokenizer=small)


@pytest.mark.multiproc
def test_two_ranks_see_disjoint_samples(data):
    res = torchrun(WORKER, 2, [data["train"], str(data["root"] / "dp_cache")], timeout=240)
    by_rank = {r["rank"]: r for r in res}
    assert set(by_rank) == {0, 1}
    a, b = by_rank[0]["steps"], by_rank[1]["steps"]
    assert len(a) == len(b) == 6 and not set(sum(a, [])) & set(sum(b, []))
    # Each rank's resumed loader continues its own shard exactly.
    assert by_rank[0]["resumed"] == a[2:] and by_rank[1]["resumed"] == b[2:]
    # Both ranks built identical datasets (rank 0 wrote the index cache, rank 1 read it).
    assert by_rank[0]["first"] == by_rank[1]["first"]
