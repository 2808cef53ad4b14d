"""Calibration from raw text samples documents before tokenizing, with the same windows as a full tokenization."""

from __future__ import annotations

import numpy as np
import pytest

from nemo_minitron.data.calibration import LazyTextStream, TokenStream, load_calibration_data, sample_windows
from nemo_minitron.data.tokenizer import load_tokenizer
from tests.fixtures import corpus as C


class CountingTokenizer:
    """Wraps a tokenizer and counts the documents it encodes."""

    def __init__(self, tok):
        self.tok, self.calls = tok, 0
        self.eod_id = tok.eod_id

    def encode_document(self, text):
        self.calls += 1
        return self.tok.encode_document(text)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib_text")
    wt = C.write_wikitext_dir(root / "wt", 60, 3, 3, seed=7)
    arts = C.make_articles(66, seed=7)
    tok = load_tokenizer(C.train_bpe_tokenizer([C.wikitext_text(arts)], root / "tok"))
    return dict(train=wt / "wiki.train.raw", tok=tok)


@pytest.mark.parametrize("num, seq, seed", [(5, 16, 0), (12, 200, 3), (70, 64, 1)])
def test_lazy_windows_equal_full_tokenization(corpus, num, seq, seed):
    full = TokenStream.from_text(corpus["train"], corpus["tok"])
    lazy = LazyTextStream.from_text(corpus["train"], corpus["tok"])
    want = sample_windows(full, num, seq, seed)
    got = sample_windows(lazy, num, seq, seed)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_only_sampled_documents_are_tokenized(corpus):
    counting = CountingTokenizer(corpus["tok"])
    lazy = LazyTextStream.from_text(corpus["train"], counting)
    assert lazy.num_documents == 60
    sample_windows(lazy, 4, 16, seed=2)  # short windows: each stays inside its own document or the next
    assert 4 <= counting.calls <= 8 and lazy.num_tokenized == counting.calls


def test_load_calibration_data_from_raw_text(corpus):
    data = load_calibration_data(corpus["train"], 6, 32, seed=4, tokenizer=corpus["tok"])
    full = sample_windows(TokenStream.from_text(corpus["train"], corpus["tok"]), 6, 32, 4)
    assert np.array_equal(data.tokens.numpy(), full[0]) and np.array_equal(data.mask.numpy(), full[1])
