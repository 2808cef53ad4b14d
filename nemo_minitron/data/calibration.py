"""Calibration samples for activation-based importance estimation (Minitron, arXiv 2407.14679 §2).

:func:`load_calibration_data` draws ``num_samples`` windows of ``seq_length`` tokens from a corpus,
deterministically for a given seed, and returns them with a mask that tells importance
statistics which positions to count.

The corpus is a token stream with document boundaries: either a preprocessed indexed dataset
(``PREFIX.bin``/``PREFIX.idx``, read by mmap) or raw text (.txt / .jsonl / WikiText .raw, or a
directory) tokenized here exactly as the preprocessing does (BOS if wanted, EOD per document),
so both give identical samples. Sampling: documents are visited in a seeded random order
(another permutation starts when all have been used). A document longer than ``seq_length``
contributes a window at a seeded random offset inside it; a shorter one is taken from its start
and the window continues into the following documents. Mask semantics: True for the window's own
document up to and including its EOD; False after that document boundary (the next document's
tokens see an unrelated prefix) and for padding past the end of the corpus.

Raw text is not tokenized as a whole: :class:`LazyTextStream` keeps the document texts and tokenizes
only the documents a window reads (the sampled one and, for a short one, those it runs into), so
drawing N windows from a large corpus costs about N documents of tokenizer work. Every document of a
raw corpus ends with EOD, so none is empty and the seeded document order is the same as the one drawn
from the preprocessed dataset. Large corpora are best preprocessed once (mmap, the default path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from nemo_minitron.config.model import ConfigError
from nemo_minitron.data.integrity import check_indexed_dataset
from nemo_minitron.data.tokenizer import Tokenizer, as_tokenizer
from nemo_minitron.data.wikitext import iter_documents
from nemo_minitron.logging import get_logger

__all__ = ["CalibrationData", "LazyTextStream", "load_calibration_data", "sample_windows", "TokenStream"]

log = get_logger(__name__)


@dataclass
class CalibrationData:
    """``tokens`` LongTensor [N, L] and ``mask`` BoolTensor [N, L] (True = counts for statistics)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    source: str = ""
    seed: int = 0

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_tokens(self) -> int:
        """Number of positions that count (mask True)."""
        return int(self.mask.sum())

    def batches(self, micro_batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (tokens, mask) micro-batches in order."""
        if micro_batch_size < 1:
            raise ConfigError(f"micro_batch_size={micro_batch_size} must be >= 1")
        for i in range(0, len(self), micro_batch_size):
            yield self.tokens[i:i + micro_batch_size], self.mask[i:i + micro_batch_size]


@dataclass
class TokenStream:
    """All tokens of a corpus back to back, with the token offset where each document starts."""

    tokens: np.ndarray
    doc_starts: np.ndarray
    """int64 [D + 1]: document d spans ``tokens[doc_starts[d]:doc_starts[d + 1]]``."""
    pad_id: int = 0

    @classmethod
    def from_indexed_dataset(cls, prefix: str, vocab_size: Optional[int] = None) -> "TokenStream":
        """Map ``prefix.bin`` (validated first); documents may span several sequences."""
        info = check_indexed_dataset(prefix, vocab_size=vocab_size, scan_tokens=vocab_size is not None)
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        ds = IndexedDataset(prefix)
        # Copies (cumsum, fancy indexing): ds's arrays are views into an mmap closed with ds.
        seq_starts = np.concatenate([[0], np.cumsum(ds.sequence_lengths, dtype=np.int64)])
        doc_starts = seq_starts[np.array(ds.document_indices, dtype=np.int64)]
        del ds
        tokens = np.memmap(prefix + ".bin", dtype=np.dtype(info.dtype), mode="r", shape=(info.num_tokens,)) \
            if info.num_tokens else np.zeros(0, dtype=np.int64)
        return cls(tokens, doc_starts, info.eod_id or 0)

    @classmethod
    def from_text(cls, path: str | os.PathLike, tokenizer: Tokenizer, text_field: str = "text") -> "TokenStream":
        """Tokenize a raw text corpus like the preprocessing does."""
        docs = [np.asarray(tokenizer.encode_document(d), dtype=np.int64) for d in iter_documents(path, text_field)]
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        tokens = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)
        return cls(tokens, np.concatenate([[0], np.cumsum(lengths)]), tokenizer.eod_id)

    @property
    def num_documents(self) -> int:
        """Number of documents."""
        return len(self.doc_starts) - 1

    def usable_documents(self) -> np.ndarray:
        """Indices of the documents with at least one token."""
        return np.flatnonzero(np.diff(self.doc_starts) > 0)

    def doc_length(self, d: int) -> int:
        """Tokens in document ``d``."""
        return int(self.doc_starts[d + 1] - self.doc_starts[d])

    def read(self, d: int, offset: int, count: int) -> np.ndarray:
        """Up to ``count`` tokens from ``offset`` inside document ``d`` on, running into the next documents."""
        begin = int(self.doc_starts[d]) + offset
        return np.asarray(self.tokens[begin:min(begin + count, len(self.tokens))])


class LazyTextStream:
    """A raw text corpus read as a token stream, tokenizing a document only when a window reads it."""

    def __init__(self, texts: list[str], tokenizer: Tokenizer):
        self.texts = texts
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.eod_id
        self._ids: dict[int, np.ndarray] = {}

    @classmethod
    def from_text(cls, path: str | os.PathLike, tokenizer: Tokenizer, text_field: str = "text") -> "LazyTextStream":
        """Read the documents of ``path`` (no tokenization yet)."""
        return cls(list(iter_documents(path, text_field)), tokenizer)

    @property
    def num_documents(self) -> int:
        """Number of documents."""
        return len(self.texts)

    @property
    def num_tokenized(self) -> int:
        """Documents tokenized so far."""
        return len(self._ids)

    def _doc(self, d: int) -> np.ndarray:
        if d not in self._ids:
            self._ids[d] = np.asarray(self.tokenizer.encode_document(self.texts[d]), dtype=np.int64)
        return self._ids[d]

    def usable_documents(self) -> np.ndarray:
        """Every document (each ends with EOD, so none is empty)."""
        return np.arange(len(self.texts))

    def doc_length(self, d: int) -> int:
        """Tokens in document ``d`` (tokenizes it)."""
        return len(self._doc(d))

    def read(self, d: int, offset: int, count: int) -> np.ndarray:
        """Up to ``count`` tokens from ``offset`` inside document ``d`` on, running into the next documents."""
        parts, need = [], count
        while need > 0 and d < len(self.texts):
            part = self._doc(d)[offset:offset + need]
            parts.append(part)
            need -= len(part)
            d, offset = d + 1, 0
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def sample_windows(stream: TokenStream | LazyTextStream, num_samples: int, seq_length: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The deterministic window selection described in the module docstring; returns (tokens, mask) arrays."""
    usable = stream.usable_documents()
    if usable.size == 0:
        raise ConfigError("the calibration source has no tokens")
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(usable) for _ in range(-(-num_samples // usable.size))])[:num_samples]
    tokens = np.full((num_samples, seq_length), stream.pad_id, dtype=np.int64)
    mask = np.zeros((num_samples, seq_length), dtype=bool)
    for i, d in enumerate(order.tolist()):
        n = stream.doc_length(d)
        offset = int(rng.integers(0, n - seq_length + 1)) if n > seq_length else 0
        window = stream.read(d, offset, seq_length)
        tokens[i, :len(window)] = window
        mask[i, :min(n - offset, seq_length)] = True
    return tokens, mask


def _is_prefix(source: str) -> bool:
    return os.path.isfile(source + ".bin") and os.path.isfile(source + ".idx")


def load_calibration_data(source: str | os.PathLike, num_samples: int, seq_length: int, seed: int = 1234,
                          tokenizer: Tokenizer | str | os.PathLike | None = None) -> CalibrationData:
    """Draw ``num_samples`` × ``seq_length`` calibration tokens with their statistics mask.

    ``source`` is an indexed-dataset prefix (``PREFIX.bin``/``.idx`` exist) or a raw .txt / .jsonl
    (field ``text``) / WikiText .raw file or directory, which needs ``tokenizer`` (object or path).
    With a prefix, a given tokenizer's vocabulary is checked against the data.
    """
    if num_samples < 1:
        raise ConfigError(f"num_samples={num_samples} must be >= 1")
    if seq_length < 1:
        raise ConfigError(f"seq_length={seq_length} must be >= 1")
    src = str(Path(source).expanduser())
    tok = as_tokenizer(tokenizer)
    if _is_prefix(src):
        stream = TokenStream.from_indexed_dataset(src, None if tok is None else tok.vocab_size)
    elif os.path.exists(src):
        if tok is None:
            raise ConfigError(f"calibration source {src!r} is raw text: pass tokenizer= (a path or load_tokenizer())")
        stream = LazyTextStream.from_text(src, tok)
    else:
        raise ConfigError(f"calibration source {src!r}: neither a dataset prefix ({src}.bin/.idx) nor a file")
    tokens, mask = sample_windows(stream, num_samples, seq_length, seed)
    if isinstance(stream, LazyTextStream):
        log.info("calibration: tokenized %d of %d documents", stream.num_tokenized, stream.num_documents)
    data = CalibrationData(torch.from_numpy(tokens), torch.from_numpy(mask), src, seed)
    log.info("calibration data: %d samples x %d tokens from %s (%d documents), %.1f%% of positions counted",
             num_samples, seq_length, src, stream.num_documents, 100.0 * data.num_tokens / tokens.size)
    return data
