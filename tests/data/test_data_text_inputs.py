"""Non-text corpora and calibration files are refused with a message naming the file."""

import os

import pytest

from nemo_minitron.data.wikitext import DataInputError, check_text_file, iter_documents


def _random_bytes(path, n=4096, seed=0):
    import random

    path.write_bytes(random.Random(seed).randbytes(n))
    return path


@pytest.mark.parametrize("name", ["corpus.txt", "wiki.train.raw", "c.jsonl"])
def test_random_bytes_are_not_a_corpus(tmp_path, name):
    f = _random_bytes(tmp_path / name)
    with pytest.raises(DataInputError, match=f"{f.name} is not (UTF-8 )?text"):
        list(iter_documents(f))


def test_nul_bytes_in_otherwise_ascii_file(tmp_path):
    f = tmp_path / "c.txt"
    f.write_bytes(b"hello world\n" * 100 + b"\x00\x00\x00\x01" + b"more\n")
    with pytest.raises(DataInputError, match="c.txt is not text"):
        check_text_file(f)


def test_undecodable_bytes_after_the_sniffed_head(tmp_path):
    f = tmp_path / "c.txt"
    f.write_bytes(b"word " * 20000 + b"\xff\xfe bad")
    with pytest.raises(DataInputError, match="c.txt is not UTF-8 text"):
        list(iter_documents(f))


def test_real_text_passes(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("Grüße — naïve café\tok\n" * 5000, encoding="utf-8")  # multibyte chars across the 64 KiB cut
    check_text_file(f)
    assert list(iter_documents(f))


def test_calibration_refuses_random_bytes(tmp_path):
    from nemo_minitron.data.calibration import load_calibration_data
    from tests.fixtures import corpus as C

    tok = C.train_bpe_tokenizer([C.wikitext_text(C.make_articles(5))], tmp_path / "tok")
    f = _random_bytes(tmp_path / "calib.txt")
    with pytest.raises(DataInputError, match="calib.txt"):
        load_calibration_data(str(f), 4, 16, tokenizer=str(tok))
    assert os.path.exists(f)
