"""Calibration samples: determinism, mask semantics, raw text == preprocessed data, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nemo_minitron.config.model import ConfigError
from nemo_minitron.data.calibration import TokenStream, load_calibration_data, sample_windows
from nemo_minitron.data.integrity import DataIntegrityError
from nemo_minitron.data.preprocess import preprocess_corpus
from nemo_minitron.data.tokenizer import load_tokenizer
from tests.fixtures import corpus as C


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    wt = C.write_wikitext_dir(root / "wt", 30, 3, 3, seed=5)
    arts = C.make_articles(36, seed=5)
    tok = load_tokenizer(C.train_bpe_tokenizer([C.wikitext_text(arts)], root / "tok"))
    out = preprocess_corpus(wt, tok, root / "ds" / "wt", workers=1, progress=False)
    docs = [tok.encode_document(d) for d in C.expected_documents(arts[:30])]
    return dict(root=root, wt=wt, tok=tok, prefix=out["train"].prefix, docs=docs)


def test_deterministic_and_seed_dependent(data):
    a = load_calibration_data(data["prefix"], 12, 96, seed=1)
    b = load_calibration_data(data["prefix"], 12, 96, seed=1)
    c = load_calibration_data(data["prefix"], 12, 96, seed=2)
    assert a.tokens.shape == a.mask.shape == (12, 96) and a.tokens.dtype == torch.long and a.mask.dtype == torch.bool
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.tokens, c.tokens)
    assert [t.shape[0] for t, _ in a.batches(5)] == [5, 5, 2] and len(a) == 12


def test_mask_marks_own_document_only(data):
    docs, eod = data["docs"], data["tok"].eod_id
    stream = np.concatenate([np.asarray(d) for d in docs])
    L = 256  # longer than many documents: windows cross boundaries
    cal = load_calibration_data(data["prefix"], 40, L, seed=3)
    crossed = 0
    for toks, mask in zip(cal.tokens.numpy(), cal.mask.numpy()):
        n = int(mask.sum())
        assert n >= 1 and mask[:n].all() and not mask[n:].any()  # one contiguous counted prefix
        # The counted tokens are a slice of one document; if the window ends early, it ends on EOD.
        window = toks[:n].tolist()
        assert any(_contains(d, window) for d in docs)
        if n < L:
            crossed += 1
            assert window[-1] == eod
        assert eod not in window[:-1]
        # Uncounted tokens are the corpus continuing after that document (or padding at the end).
        start = _find(stream, toks[:n])
        rest = toks[n:]
        tail = stream[start + n:start + L]
        assert (rest[:len(tail)] == tail).all()
    assert crossed > 0


def _contains(doc, window):
    d = np.asarray(doc)
    return _find(d, np.asarray(window)) >= 0


def _find(hay: np.ndarray, needle: np.ndarray) -> int:
    n = len(needle)
    for i in np.flatnonzero(hay == needle[0]):
        if i + n <= len(hay) and (hay[i:i + n] == needle).all():
            return int(i)
    return -1


def test_raw_text_gives_the_same_samples(data):
    from_ds = load_calibration_data(data["prefix"], 16, 128, seed=9)
    from_raw = load_calibration_data(data["wt"] / "wiki.train.raw", 16, 128, seed=9, tokenizer=data["tok"].path)
    assert torch.equal(from_ds.tokens, from_raw.tokens) and torch.equal(from_ds.mask, from_raw.mask)


def test_more_samples_than_documents_and_padding():
    stream = TokenStream(np.arange(1, 11), np.array([0, 4, 10]), pad_id=0)  # docs [1..4], [5..10]
    toks, mask = sample_windows(stream, 5, 8, seed=0)
    assert toks.shape == (5, 8)
    for t, m in zip(toks, mask):
        if t[0] == 1:  # first doc: 4 counted, then the second doc's tokens uncounted
            assert t.tolist() == [1, 2, 3, 4, 5, 6, 7, 8] and m.tolist() == [True] * 4 + [False] * 4
        else:  # second doc from its start: 6 counted, then padding past the corpus end
            assert t.tolist() == [5, 6, 7, 8, 9, 10, 0, 0] and m.tolist() == [True] * 6 + [False] * 2
    # Every document is used before any repeats.
    assert sorted(t[0] for t in toks[:2]) == [1, 5]
    # Long documents give windows at random offsets, fully counted.
    toks, mask = sample_windows(TokenStream(np.arange(100), np.array([0, 100])), 6, 10, seed=1)
    assert mask.all() and all((t == np.arange(t[0], t[0] + 10)).all() for t in toks)
    assert len({int(t[0]) for t in toks}) > 1


def test_errors(data):
    with pytest.raises(ConfigError, match="pass tokenizer="):
        load_calibration_data(data["wt"] / "wiki.train.raw", 4, 32)
    with pytest.raises(ConfigError, match="neither a dataset prefix"):
        load_calibration_data(str(data["root"] / "missing"), 4, 32)
    with pytest.raises(ConfigError, match="num_samples=0"):
        load_calibration_data(data["prefix"], 0, 32)
    small = C.train_bpe_tokenizer(["tiny corpus"], data["root"] / "small", vocab_size=280)
    with pytest.raises(DataIntegrityError, match="vocabulary"):
        load_calibration_data(data["prefix"], 4, 32, tokenizer=small)
