"""Parallel tokenization into megatron indexed datasets, and the integrity checks on load."""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest

from nemo_minitron.data.integrity import DataIntegrityError, check_indexed_dataset, read_meta
from nemo_minitron.data.preprocess import preprocess_corpus, tokenize_to_indexed_dataset
from nemo_minitron.data.tokenizer import load_tokenizer
from tests.fixtures import corpus as C

N_TRAIN, N_VALID, N_TEST = 40, 5, 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    wt = C.write_wikitext_dir(root / "wt", N_TRAIN, N_VALID, N_TEST, seed=7)
    arts = C.make_articles(N_TRAIN + N_VALID + N_TEST, seed=7)
    tok = load_tokenizer(C.train_bpe_tokenizer([C.wikitext_text(arts)], root / "tok"))
    one = preprocess_corpus(wt, tok, root / "w1" / "wt", workers=1, progress=False)
    two = preprocess_corpus(wt, tok, root / "w2" / "wt", workers=2, progress=True)
    return dict(root=root, wt=wt, arts=arts, tok=tok, one=one, two=two)


def _read(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    out = [np.array(ds[i]) for i in range(len(ds))], np.array(ds.document_indices)
    del ds
    return out


def test_counts_boundaries_and_eod(setup):
    tok, arts = setup["tok"], setup["arts"]
    splits = {"train": arts[:N_TRAIN], "valid": arts[N_TRAIN:N_TRAIN + N_VALID], "test": arts[N_TRAIN + N_VALID:]}
    assert set(setup["one"]) == {"train", "valid", "test"}
    for name, split_arts in splits.items():
        summary = setup["one"][name]
        assert summary.prefix.endswith(f"wt_{name}_text_document")
        docs = C.expected_documents(split_arts)
        direct = [tok.encode(d) + [tok.eod_id] for d in docs]
        seqs, doc_idx = _read(summary.prefix)
        # One sequence per document, in order, identical to direct tokenization + EOD.
        assert len(seqs) == len(docs) == summary.documents
        assert doc_idx.tolist() == list(range(len(docs) + 1))
        assert [s.tolist() for s in seqs] == direct
        assert summary.tokens == sum(len(d) for d in direct)
        # EOD closes every document and appears nowhere else; text round-trips.
        for s, d in zip(seqs, docs):
            assert s[-1] == tok.eod_id and tok.eod_id not in s[:-1].tolist()
            assert tok.decode(s[:-1]) == d
        assert summary.dtype == "uint16" and seqs[0].dtype == np.uint16


def test_worker_count_does_not_change_bytes_and_meta(setup):
    for name in ("train", "valid", "test"):
        a, b = setup["one"][name].prefix, setup["two"][name].prefix
        for ext in (".bin", ".idx"):
            with open(a + ext, "rb") as fa, open(b + ext, "rb") as fb:
                assert fa.read() == fb.read(), (name, ext)
        assert setup["two"][name].workers == 2
    meta = read_meta(setup["two"]["train"].prefix)
    assert meta["tokenizer"]["vocab_size"] == 400 and meta["tokenizer"]["eod_id"] == setup["tok"].eod_id
    assert meta["documents"] == N_TRAIN and meta["dtype"] == "uint16" and meta["sources"][0].endswith("wiki.train.raw")
    info = check_indexed_dataset(setup["two"]["train"].prefix, vocab_size=400)
    assert (info.num_documents, info.num_tokens, info.max_token < 400) == (N_TRAIN, meta["tokens"], True)
    # Nothing but the finished files is left in the output directory.
    assert sorted(os.listdir(setup["root"] / "w2")) == sorted(
        f"wt_{s}_text_document{e}" for s in ("train", "valid", "test") for e in (".bin", ".idx", ".meta.json"))


def test_single_file_bos_and_failed_run_is_atomic(setup, tmp_path):
    tok = setup["tok"]
    docs = C.expected_documents(setup["arts"][:5])
    prefix = tmp_path / "out" / "corpus_text_document"
    s = tokenize_to_indexed_dataset(docs, tok.path, prefix, workers=1, progress=False)
    before = {e: (str(prefix) + e, open(str(prefix) + e, "rb").read()) for e in (".bin", ".idx")}

    def broken():
        yield docs[0]
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError, match="reader died"):
        tokenize_to_indexed_dataset(broken(), tok, prefix, workers=2, progress=False, overwrite=True)
    assert all(open(p, "rb").read() == data for p, data in before.values())
    assert sorted(os.listdir(tmp_path / "out")) == ["corpus_text_document.bin", "corpus_text_document.idx",
                                                    "corpus_text_document.meta.json"]
    assert check_indexed_dataset(str(prefix)).num_documents == s.documents == 5
    with pytest.raises(FileExistsError, match="output_prefix"):
        tokenize_to_indexed_dataset(docs, tok, prefix, overwrite=False, progress=False)
    # A JSONL file gives <prefix>_text_document; the BOS tokenizer puts BOS first.
    cfg = json.loads((tok.path and open(os.path.join(tok.path, "tokenizer_config.json")).read()))
    bos_dir = tmp_path / "bos"
    shutil.copytree(tok.path, bos_dir)
    (bos_dir / "tokenizer_config.json").write_text(json.dumps(cfg | {"add_bos_token": True}))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = preprocess_corpus(tmp_path / "c.jsonl", bos_dir, tmp_path / "j" / "c", workers=1, progress=False)
    seqs, _ = _read(out["all"].prefix)
    assert out["all"].prefix.endswith("c_text_document")
    assert all(s[0] == 1 and s[-1] == tok.eod_id for s in seqs) and len(seqs) == 5


def _copy(prefix, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    for ext in (".bin", ".idx", ".meta.json"):
        shutil.copy(prefix + ext, dst + ext)
    return dst


def test_integrity_errors(setup, tmp_path):
    train, valid = setup["one"]["train"].prefix, setup["one"]["valid"].prefix
    # Truncated .bin.
    p = _copy(train, str(tmp_path / "trunc" / "d"))
    size = os.path.getsize(p + ".bin")
    with open(p + ".bin", "r+b") as f:
        f.truncate(size - 10)
    with pytest.raises(DataIntegrityError, match=r"d\.bin: .* truncated"):
        check_indexed_dataset(p)
    # .idx of another dataset next to this .bin.
    p = _copy(train, str(tmp_path / "mix" / "d"))
    shutil.copy(valid + ".idx", p + ".idx")
    with pytest.raises(DataIntegrityError, match="different runs"):
        check_indexed_dataset(p)
    # Truncated .idx.
    p = _copy(train, str(tmp_path / "tidx" / "d"))
    with open(p + ".idx", "r+b") as f:
        f.truncate(os.path.getsize(p + ".idx") - 8)
    with pytest.raises(DataIntegrityError, match=r"d\.idx: .*truncated or corrupt"):
        check_indexed_dataset(p)
    # Wrong dtype: the index claims int32 tokens for the uint16 data.
    p = _copy(train, str(tmp_path / "dtype" / "d"))
    with open(p + ".idx", "r+b") as f:
        f.seek(17)
        f.write(struct.pack("<B", 4))
    with pytest.raises(DataIntegrityError, match="dtype uint16 but .* stores int32"):
        check_indexed_dataset(p)
    os.remove(p + ".meta.json")  # without metadata the byte offsets still give it away
    with pytest.raises(DataIntegrityError, match="wrong dtype: int32 in the header, pointers fit 2-byte tokens"):
        check_indexed_dataset(p)
    # Vocabulary larger than the tokenizer's / the dtype's.
    with pytest.raises(DataIntegrityError, match="400-token vocabulary, larger than .* 256"):
        check_indexed_dataset(train, vocab_size=256)
    p = _copy(train, str(tmp_path / "nometa" / "d"))
    os.remove(p + ".meta.json")
    with pytest.raises(DataIntegrityError, match=r"contains token id \d+, outside the 100-token vocabulary"):
        check_indexed_dataset(p, vocab_size=100)
    with pytest.raises(DataIntegrityError, match="holds ids < 65536 but the vocabulary has 70000"):
        check_indexed_dataset(train, vocab_size=70000)
    # Missing file; not an index.
    with pytest.raises(DataIntegrityError, match="missing"):
        check_indexed_dataset(str(tmp_path / "none"))
    p = _copy(train, str(tmp_path / "hdr" / "d"))
    with open(p + ".idx", "r+b") as f:
        f.write(b"NOTANIDX!")
    with pytest.raises(DataIntegrityError, match="not a megatron index"):
        check_indexed_dataset(p)
