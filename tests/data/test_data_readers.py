"""Corpus readers (WikiText, JSONL, parquet, text dirs) and the tokenizer loaders."""

from __future__ import annotations

import json
import pickle

import pytest

from nemo_minitron.data.tokenizer import TokenizerError, load_tokenizer
from nemo_minitron.data.wikitext import (
    DataInputError,
    find_wikitext_splits,
    is_top_heading,
    iter_documents,
    split_wikitext,
)
from tests.fixtures import corpus as C


@pytest.fixture(scope="module")
def arts():
    return C.make_articles(12, seed=3)


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory, arts):
    return C.train_bpe_tokenizer([C.wikitext_text(arts)], tmp_path_factory.mktemp("bpe"))


def test_heading_detection():
    assert is_top_heading(" = Valkyria Chronicles III = \n")
    assert is_top_heading("= Title with = sign = ")
    assert not is_top_heading(" = = Gameplay = = \n")
    assert not is_top_heading(" = = = Deep = = = \n")
    assert not is_top_heading(" Plain text = not a heading \n")


def test_split_wikitext_recovers_articles(arts):
    text = C.wikitext_text(arts)
    docs = list(split_wikitext(text.splitlines(keepends=True)))
    assert docs == C.expected_documents(arts)
    # Sub-headings stay inside their article; every document starts with its own title.
    assert all(d.startswith(f"= {t} =") for d, (t, _) in zip(docs, arts))


def test_split_wikitext_leading_text_is_a_document():
    docs = list(split_wikitext(["preamble line\n", " = A = \n", " body a \n", " = B = \n", " body b \n"]))
    assert docs == ["preamble line", "= A = \n body a", "= B = \n body b"]


def test_raw_file_and_split_directory(tmp_path, arts):
    root = C.write_wikitext_dir(tmp_path / "wt", n_train=8, n_valid=2, n_test=2, seed=3)
    splits = find_wikitext_splits(root)
    assert {k: [f.name for f in v] for k, v in splits.items()} == {
        "train": ["wiki.train.raw"], "valid": ["wiki.valid.raw"], "test": ["wiki.test.raw"]}
    assert list(iter_documents(splits["valid"])) == C.expected_documents(arts[8:10])
    (root / "wiki.valid.tokens").write_text("x")
    with pytest.raises(DataInputError, match="keep one format"):
        find_wikitext_splits(root)
    assert find_wikitext_splits(tmp_path / "nothing") is None


def test_jsonl_rows_and_hf_style_line_rows(tmp_path, arts):
    docs = C.expected_documents(arts)
    rows = tmp_path / "docs.jsonl"
    rows.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    assert list(iter_documents(rows)) == docs
    # Hugging Face's wikitext stores one line per row: rows are regrouped into articles.
    lines = tmp_path / "lines.jsonl"
    lines.write_text("".join(json.dumps({"text": line}) + "\n"
                             for line in C.wikitext_text(arts).splitlines(keepends=True)))
    assert list(iter_documents(lines)) == docs
    assert len(list(iter_documents(lines, group="row"))) > len(docs)
    with pytest.raises(DataInputError, match="text_field='content'"):
        list(iter_documents(rows, text_field="content"))


def test_parquet(tmp_path, arts):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    docs = C.expected_documents(arts)
    pq.write_table(pa.table({"text": docs}), tmp_path / "train-00000-of-00001.parquet")
    assert list(iter_documents(tmp_path / "train-00000-of-00001.parquet")) == docs
    # HF wikitext layout: one line per row, sharded; an article cut across shards stays whole.
    hf = tmp_path / "hf"
    hf.mkdir()
    lines = C.wikitext_text(arts).splitlines(keepends=True)
    cut = len(lines) // 2 + 3
    pq.write_table(pa.table({"text": lines[:cut]}), hf / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"text": lines[cut:]}), hf / "train-00001-of-00002.parquet")
    pq.write_table(pa.table({"text": lines[:5]}), hf / "validation-00000-of-00001.parquet")
    splits = find_wikitext_splits(hf)
    assert [f.name for f in splits["train"]] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert list(iter_documents(splits["train"])) == docs and "test" not in splits
    with pytest.raises(DataInputError, match="text_field='body'"):
        list(iter_documents(tmp_path / "train-00000-of-00001.parquet", text_field="body"))


def test_text_directory(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("first document\n\nstill first\n")
    (tmp_path / "b" / "c.txt").write_text("second document\n")
    (tmp_path / ".hidden.txt").write_text("ignored\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    assert list(iter_documents(tmp_path)) == ["first document\n\nstill first", "second document"]
    with pytest.raises(DataInputError, match="does not exist"):
        list(iter_documents(tmp_path / "missing"))


def test_hf_tokenizer_dir(bpe_dir, tmp_path, arts):
    tok = load_tokenizer(bpe_dir)
    assert tok.kind == "hf" and tok.vocab_size == 400 and tok.eod_id == 0 and tok.bos_id == 1
    text = C.expected_documents(arts)[0]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode_document(text) == ids + [0]
    # add_bos_token in tokenizer_config.json → BOS first.
    cfg = json.loads((bpe_dir / "tokenizer_config.json").read_text())
    bos_dir = tmp_path / "bos"
    bos_dir.mkdir()
    (bos_dir / "tokenizer.json").write_text((bpe_dir / "tokenizer.json").read_text())
    (bos_dir / "tokenizer_config.json").write_text(json.dumps(cfg | {"add_bos_token": True}))
    tok_bos = load_tokenizer(bos_dir)
    assert tok_bos.encode_document(text) == [1] + ids + [0]
    # eod_token override (e.g. <|endoftext|> instead of a chat tokenizer's end-of-turn eos).
    alt = load_tokenizer(bpe_dir, eod_token="<s>")
    assert alt.eod_id == 1 and alt.encode_document("a")[-1] == 1 and pickle.loads(pickle.dumps(alt)).eod_id == 1
    with pytest.raises(TokenizerError, match="eod_token='<nope>'"):
        load_tokenizer(bpe_dir, eod_token="<nope>")
    # Picklable by path (worker processes reload it).
    again = pickle.loads(pickle.dumps(tok))
    assert again.encode(text) == ids and again.describe() == tok.describe()


def test_sentencepiece_and_tiktoken(tmp_path, arts):
    sp = load_tokenizer(C.train_sentencepiece([C.wikitext_text(arts)], tmp_path / "sp", vocab_size=300))
    import sentencepiece as spm

    assert sp.kind == "sentencepiece" and sp.add_bos
    assert sp.vocab_size == spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model")).get_piece_size()
    doc = sp.encode_document("the river city")
    assert doc[0] == sp.bos_id and doc[-1] == sp.eod_id and sp.decode(doc[1:-1]) == "the river city"

    tk = load_tokenizer(C.write_tiktoken_file(tmp_path / "tiny.tiktoken"))
    assert tk.kind == "tiktoken" and tk.vocab_size == 267 and tk.eod_id == 266 and tk.bos_id is None
    ids = tk.encode("the other")
    assert ids[0] == 257 and tk.decode(ids) == "the other"  # b"the" is rank 257
    assert tk.encode_document("x") == [ord("x"), 266]


def test_gguf_tokenizer(bpe_dir, tmp_path, arts):
    pytest.importorskip("gguf")
    gguf_tok = load_tokenizer(C.write_gguf_tokenizer(bpe_dir, tmp_path / "tiny.gguf"))
    ref = load_tokenizer(bpe_dir)
    assert (gguf_tok.kind, gguf_tok.vocab_size, gguf_tok.eod_id, gguf_tok.bos_id) == ("gguf", 400, 0, 1)
    text = C.expected_documents(arts)[1]
    assert gguf_tok.encode(text) == ref.encode(text) and gguf_tok.decode(gguf_tok.encode(text)) == text
    # Pickles carry the tokenizer JSON (workers do not re-parse the GGUF).
    again = pickle.loads(pickle.dumps(gguf_tok))
    assert again.encode(text) == ref.encode(text) and again.path == gguf_tok.path


def test_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "bad.tiktoken").write_text("not base64 at all\n")
    with pytest.raises(TokenizerError, match="tiktoken"):
        load_tokenizer(tmp_path / "bad.tiktoken")
