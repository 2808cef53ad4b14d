"""Check a megatron-core indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``) before anything mmaps it.

megatron-core trusts its files: a truncated ``.bin`` or an ``.idx`` from another run is read out of
bounds or silently yields garbage tokens, and a token id beyond the model's vocabulary only fails
deep inside the embedding lookup. :func:`check_indexed_dataset` validates the layout of the
``.idx`` (header, version, dtype code, exact size, document indices, sequence pointers), that the
``.bin`` size is exactly what the index describes, the dtype and counts recorded by our
preprocessing in ``PREFIX.meta.json``, and (optionally) that no token id reaches the vocabulary
size. Every failure raises :class:`DataIntegrityError` naming the file and the numbers that
disagree.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

__all__ = ["DataIntegrityError", "DatasetInfo", "check_indexed_dataset", "meta_path", "read_meta",
           "INDEX_HEADER", "DTYPE_CODES"]

INDEX_HEADER = b"MMIDIDX\x00\x00"
# megatron.core.datasets.indexed_dataset.DType codes.
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
               8: np.uint16}
_FIXED_HEADER = 9 + 8 + 1 + 8 + 8


class DataIntegrityError(ValueError):
    """An indexed dataset is missing, truncated, inconsistent or does not fit the tokenizer."""


def meta_path(prefix: str) -> str:
    """Path of the JSON summary written next to ``PREFIX.bin``/``PREFIX.idx`` by our preprocessing."""
    return prefix + ".meta.json"


def read_meta(prefix: str) -> Optional[dict[str, Any]]:
    """The preprocessing summary of ``prefix``, or None for datasets made by other tools."""
    path = meta_path(prefix)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DataIntegrityError(f"{path}: unreadable dataset metadata ({exc})") from None


@dataclass
class DatasetInfo:
    """What :func:`check_indexed_dataset` learned about a dataset."""

    prefix: str
    dtype: str
    """numpy dtype name of the token ids (e.g. uint16)."""
    num_sequences: int
    num_documents: int
    num_tokens: int
    max_token: Optional[int] = None
    """Largest token id (None when the scan was skipped or the dataset is empty)."""
    meta: Optional[dict[str, Any]] = field(default=None, repr=False)

    @property
    def vocab_size(self) -> Optional[int]:
        """Vocabulary size recorded at preprocessing time, if known."""
        return None if self.meta is None else self.meta.get("tokenizer", {}).get("vocab_size")

    @property
    def eod_id(self) -> Optional[int]:
        """End-of-document id recorded at preprocessing time, if known."""
        return None if self.meta is None else self.meta.get("tokenizer", {}).get("eod_id")


def _read_index_header(idx_path: str) -> tuple[type, int, int]:
    size = os.path.getsize(idx_path)
    if size < _FIXED_HEADER:
        raise DataIntegrityError(f"{idx_path}: {size} bytes is shorter than the {_FIXED_HEADER}-byte index header "
                                 "(truncated file)")
    with open(idx_path, "rb") as f:
        header = f.read(9)
        if header != INDEX_HEADER:
            raise DataIntegrityError(f"{idx_path}: not a megatron index file (header {header!r})")
        version = struct.unpack("<Q", f.read(8))[0]
        if version != 1:
            raise DataIntegrityError(f"{idx_path}: index version {version} (only version 1 is supported)")
        code = struct.unpack("<B", f.read(1))[0]
        if code not in DTYPE_CODES:
            raise DataIntegrityError(f"{idx_path}: unknown token dtype code {code}")
        num_seq = struct.unpack("<Q", f.read(8))[0]
        num_doc_idx = struct.unpack("<Q", f.read(8))[0]
    return DTYPE_CODES[code], num_seq, num_doc_idx


def _max_token(bin_path: str, dtype, count: int, chunk: int = 1 << 24) -> Optional[int]:
    if count == 0:
        return None
    data = np.memmap(bin_path, dtype=dtype, mode="r", shape=(count,))
    best = 0
    for start in range(0, count, chunk):
        best = max(best, int(data[start:start + chunk].max()))
    del data
    return best


def check_indexed_dataset(prefix: str, vocab_size: Optional[int] = None, scan_tokens: bool = True,
                          multimodal: bool = False) -> DatasetInfo:
    """Validate ``prefix.idx``/``prefix.bin`` (and ``prefix.meta.json`` if present); return their summary.

    ``vocab_size`` is the tokenizer's (or model's) vocabulary: the dataset's recorded vocabulary and,
    with ``scan_tokens``, its largest token id must fit in it.
    """
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    missing = [p for p in (idx_path, bin_path) if not os.path.isfile(p)]
    if missing:
        raise DataIntegrityError(f"dataset {prefix!r}: missing {', '.join(missing)}")
    dtype, num_seq, num_doc_idx = _read_index_header(idx_path)
    idx_size = os.path.getsize(idx_path)
    expected = _FIXED_HEADER + num_seq * (4 + 8 + (1 if multimodal else 0)) + num_doc_idx * 8
    if idx_size != expected:
        raise DataIntegrityError(
            f"{idx_path}: {idx_size} bytes but its header describes {num_seq} sequences and {num_doc_idx} "
            f"document indices ({expected} bytes): the index is truncated or corrupt")
    with open(idx_path, "rb") as f:
        f.seek(_FIXED_HEADER)
        lengths = np.frombuffer(f.read(4 * num_seq), dtype=np.int32)
        pointers = np.frombuffer(f.read(8 * num_seq), dtype=np.int64)
        doc_idx = np.frombuffer(f.read(8 * num_doc_idx), dtype=np.int64)
    if num_doc_idx == 0 or doc_idx[0] != 0 or doc_idx[-1] != num_seq or np.any(np.diff(doc_idx) < 0):
        raise DataIntegrityError(f"{idx_path}: document indices must rise from 0 to the {num_seq} sequences")
    if np.any(lengths < 0):
        raise DataIntegrityError(f"{idx_path}: negative sequence lengths")
    itemsize = np.dtype(dtype).itemsize
    num_tokens = int(lengths.sum(dtype=np.int64))
    starts = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]) * itemsize if num_seq else pointers
    meta = read_meta(prefix)
    if meta is not None and meta.get("dtype") not in (None, np.dtype(dtype).name):
        raise DataIntegrityError(f"{meta_path(prefix)}: dtype {meta['dtype']} but {idx_path} stores "
                                 f"{np.dtype(dtype).name} (wrong dtype)")
    if not np.array_equal(pointers, starts):
        fits = [size for size in (1, 2, 4, 8)
                if num_seq and size != itemsize and np.array_equal(pointers, starts // itemsize * size)]
        hint = f" (wrong dtype: {np.dtype(dtype).name} in the header, pointers fit {fits[0]}-byte tokens)" if fits else ""
        raise DataIntegrityError(f"{idx_path}: sequence pointers do not match the sequence lengths{hint}")
    bin_size = os.path.getsize(bin_path)
    if bin_size != num_tokens * itemsize:
        raise DataIntegrityError(
            f"{bin_path}: {bin_size} bytes but {idx_path} describes {num_tokens} tokens of "
            f"{np.dtype(dtype).name} ({num_tokens * itemsize} bytes): the .bin is truncated or the .idx/.bin "
            "pair comes from different runs")
    if meta is not None:
        mpath = meta_path(prefix)
        for key, actual in (("tokens", num_tokens), ("sequences", num_seq), ("documents", num_doc_idx - 1)):
            if key in meta and int(meta[key]) != actual:
                raise DataIntegrityError(f"{mpath}: records {meta[key]} {key} but {idx_path} has {actual}: "
                                         "metadata and index come from different runs")
    info = DatasetInfo(prefix, np.dtype(dtype).name, num_seq, num_doc_idx - 1, num_tokens, meta=meta)
    if vocab_size is not None:
        if np.dtype(dtype).kind == "f":
            raise DataIntegrityError(f"{idx_path}: token dtype {np.dtype(dtype).name} is not an integer type")
        limit = np.iinfo(dtype).max + 1
        if vocab_size > limit:
            raise DataIntegrityError(f"{idx_path}: token dtype {np.dtype(dtype).name} holds ids < {limit} but the "
                                     f"vocabulary has {vocab_size} tokens (wrong dtype)")
        if info.vocab_size is not None and info.vocab_size > vocab_size:
            raise DataIntegrityError(f"dataset {prefix!r} was tokenized with a {info.vocab_size}-token vocabulary, "
                                     f"larger than the tokenizer's/model's {vocab_size}")
    if scan_tokens:
        info.max_token = _max_token(bin_path, dtype, num_tokens)
        if vocab_size is not None and info.max_token is not None and info.max_token >= vocab_size:
            raise DataIntegrityError(f"dataset {prefix!r} contains token id {info.max_token}, outside the "
                                     f"{vocab_size}-token vocabulary")
    return info
