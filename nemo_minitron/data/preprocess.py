"""Tokenize a corpus into megatron-core indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``), in parallel.

This is the NeMo tutorial's WikiText-103 → JSONL → ``preprocess_data_for_megatron.py`` path as one
call: documents come from :func:`nemo_minitron.data.wikitext.iter_documents`, are encoded by a
pool of worker processes (each loads the tokenizer once), get BOS (if the tokenizer wants one)
and EOD, and are appended in input order to megatron-core's ``IndexedDatasetBuilder`` with one
sequence per document. Order is preserved, so the output bytes do not depend on the worker
count. The token dtype is megatron's ``DType.optimal_dtype`` for the vocabulary (uint16 below
65,500 tokens, else int32).

Files are written into a hidden temporary directory next to the output and moved into place
only when complete (all splits of a corpus together); ``PREFIX.meta.json`` (tokenizer, dtype, counts, sources, throughput) is
written last and checked by :mod:`nemo_minitron.data.integrity`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from nemo_minitron import termination
from nemo_minitron.atomic import clean_stale_temps
from nemo_minitron.data.integrity import meta_path
from nemo_minitron.data.tokenizer import Tokenizer, as_tokenizer
from nemo_minitron.data.wikitext import DataInputError, find_wikitext_splits, iter_documents, list_input_files
from nemo_minitron.logging import get_logger

__all__ = ["PreprocessSummary", "tokenize_to_indexed_dataset", "preprocess_corpus", "output_prefix_for",
           "token_dtype"]

log = get_logger(__name__)
FORMAT = "nemo_minitron.indexed_dataset/1"


@dataclass
class PreprocessSummary:
    """Result of one tokenization run (also stored in ``PREFIX.meta.json``)."""

    prefix: str
    documents: int
    tokens: int
    vocab_size: int
    dtype: str
    workers: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        """Throughput of the whole run (reading, tokenizing and writing)."""
        return self.tokens / max(self.seconds, 1e-9)

    @property
    def documents_per_s(self) -> float:
        """Documents per second of the whole run."""
        return self.documents / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        """JSON-able view including the throughput figures."""
        return asdict(self) | {"tokens_per_s": round(self.tokens_per_s, 1),
                               "documents_per_s": round(self.documents_per_s, 2)}


def token_dtype(vocab_size: int) -> type:
    """Smallest dtype megatron-core uses for this vocabulary (``DType.optimal_dtype``)."""
    from megatron.core.datasets.indexed_dataset import DType

    return DType.optimal_dtype(vocab_size)


# ---- worker side -------------------------------------------------------------------------------
_WORKER_TOKENIZER: Optional[Tokenizer] = None


def _init_worker(tokenizer: Tokenizer) -> None:
    """Pool initializer; ``tokenizer`` arrives pickled (reloaded by path or rebuilt from its JSON)."""
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _encode_chunk(args: tuple[list[str], str]) -> tuple[np.ndarray, np.ndarray]:
    """Encode a list of documents; return the concatenated ids and per-document lengths."""
    docs, dtype_name = args
    tok = _WORKER_TOKENIZER
    encoded = [tok.encode_document(doc) for doc in docs]
    dtype = np.dtype(dtype_name)
    lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
    flat = np.concatenate([np.asarray(ids, dtype=dtype) for ids in encoded]) if encoded else np.zeros(0, dtype)
    return flat, lengths


def _chunks(docs: Iterable[str], max_docs: int, max_chars: int) -> Iterator[list[str]]:
    """Group documents into worker tasks of at most ``max_docs`` documents or about ``max_chars`` characters."""
    chunk: list[str] = []
    chars = 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc)
        if len(chunk) >= max_docs or chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _default_start_method() -> str:
    return "fork" if "fork" in mp.get_all_start_methods() else "spawn"


# ---- main side ---------------------------------------------------------------------------------
_SUFFIXES = (".bin", ".idx", ".meta.json")


def _check_outputs(prefixes: Iterable[str], overwrite: bool) -> None:
    """Refuse existing outputs unless ``overwrite``; refuse a prefix that names a directory."""
    for prefix in prefixes:
        if os.path.isdir(prefix + ".bin") or os.path.isdir(prefix + ".idx"):
            raise IsADirectoryError(f"output_prefix={prefix!r}: {prefix}.bin/.idx is a directory")
        if not overwrite and any(os.path.exists(prefix + s) for s in _SUFFIXES):
            raise FileExistsError(f"output_prefix={prefix!r} already exists (set overwrite=true to replace it)")


def _staging_dir(prefix: str) -> str:
    """A new hidden directory next to ``prefix`` (stale ones of killed runs are removed first)."""
    out_dir = os.path.dirname(prefix)
    os.makedirs(out_dir, exist_ok=True)
    clean_stale_temps(prefix)
    tmp = os.path.join(out_dir, f".{os.path.basename(prefix)}.tmp-{os.getpid()}-{time.time_ns()}")
    os.mkdir(tmp)
    return tmp


def _missing_dirs(prefix: str) -> list[str]:
    """The directories above ``prefix`` that do not exist yet (innermost first)."""
    missing, d = [], os.path.dirname(prefix)
    while d and not os.path.exists(d):
        missing.append(d)
        d = os.path.dirname(d)
    return missing


def _remove_if_empty(dirs: list[str]) -> None:
    """After a failed run: remove the directories it created, if they stayed empty."""
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            return


def _publish(pairs: list[tuple[str, str]]) -> None:
    """Move finished ``(tmp_prefix, prefix)`` datasets into place as one set.

    Every old ``.meta.json`` of the set goes first and the new ones come last, so a reader never
    pairs new ``.bin``/``.idx`` files with stale metadata; all encoding is finished before the first
    rename, so only these renames separate the old set from the new one. A SIGTERM received before
    stops it before the first rename; one arriving during the renames takes effect after the last.
    """
    with termination.deferred():
        termination.check()
        for _, prefix in pairs:
            if os.path.exists(meta_path(prefix)):
                os.remove(meta_path(prefix))
        for tmp_prefix, prefix in pairs:
            os.replace(tmp_prefix + ".bin", prefix + ".bin")
            os.replace(tmp_prefix + ".idx", prefix + ".idx")
        for tmp_prefix, prefix in pairs:
            os.replace(tmp_prefix + ".meta.json", meta_path(prefix))
    termination.check()


def _name_the_output(exc: BaseException, prefix: str) -> None:
    """An OS error without a file name (a failed write: disk full, file too large) raised again naming ``prefix``."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
        raise OSError(exc.errno, f"{exc.strerror} while writing output_prefix (nothing was left there)",
                      prefix) from exc


def _encode_into(documents: Iterable[str], tok: Tokenizer, tmp_prefix: str, prefix: str, workers: int,
                 chunk_docs: int, chunk_chars: int, start_method: Optional[str], progress: bool,
                 sources: Optional[list[str]], dataset_set: Optional[dict] = None) -> PreprocessSummary:
    """Encode ``documents`` into ``tmp_prefix.{bin,idx,meta.json}``; the summary names the final ``prefix``."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    dtype = token_dtype(tok.vocab_size)
    t0 = time.perf_counter()
    n_docs = n_tokens = 0
    bar = None
    pool = None
    try:
        builder = IndexedDatasetBuilder(tmp_prefix + ".bin", dtype=dtype)
        jobs = ((chunk, np.dtype(dtype).name) for chunk in _chunks(documents, chunk_docs, chunk_chars))
        if workers > 1:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            ctx = mp.get_context(start_method or _default_start_method())
            with termination.deferred():  # a SIGTERM inside Pool() would leave workers it does not know about
                pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tok,))
            termination.check()
            results = pool.imap(_encode_chunk, jobs, chunksize=1)
        else:
            global _WORKER_TOKENIZER
            _WORKER_TOKENIZER = tok
            results = map(_encode_chunk, jobs)
        if progress:
            from tqdm import tqdm

            bar = tqdm(desc=f"tokenize {os.path.basename(prefix)}", unit="doc", dynamic_ncols=True, mininterval=1.0)
        for flat, lengths in results:
            offset = 0
            for n in lengths.tolist():
                builder.add_document(flat[offset:offset + n], [n])
                offset += n
            n_docs += len(lengths)
            n_tokens += int(offset)
            if bar is not None:
                bar.update(len(lengths))
                bar.set_postfix(tok_s=f"{n_tokens / max(time.perf_counter() - t0, 1e-9):,.0f}", refresh=False)
        if n_docs == 0:
            raise DataInputError(f"no documents to write to {prefix!r} (empty input)")
        builder.finalize(tmp_prefix + ".idx")
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            with termination.deferred():
                pool.terminate()
                pool.join()
    seconds = time.perf_counter() - t0
    summary = PreprocessSummary(prefix, n_docs, n_tokens, tok.vocab_size, np.dtype(dtype).name, workers,
                                round(seconds, 3))
    meta = {"format": FORMAT, "tokenizer": tok.describe(), "dtype": summary.dtype, "documents": n_docs,
            "sequences": n_docs, "tokens": n_tokens, "sources": sources or [], "workers": workers,
            "seconds": summary.seconds, "tokens_per_s": round(summary.tokens_per_s, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if dataset_set is not None:
        meta["set"] = dataset_set
    with open(tmp_prefix + ".meta.json", "w") as f:
        json.dump(meta, f, indent=2)
    return summary


def _log_summary(summary: PreprocessSummary) -> None:
    log.info("wrote %s.{bin,idx}: %d documents, %d tokens, vocab %d, %s, %.1f s (%.0f tokens/s, %.1f docs/s, "
             "%d workers)", summary.prefix, summary.documents, summary.tokens, summary.vocab_size, summary.dtype,
             summary.seconds, summary.tokens_per_s, summary.documents_per_s, summary.workers)


def _num_workers(workers: Optional[int]) -> int:
    return (os.cpu_count() or 1) if workers is None or workers <= 0 else int(workers)


def tokenize_to_indexed_dataset(
    documents: Iterable[str],
    tokenizer: Tokenizer | str | os.PathLike,
    output_prefix: str | os.PathLike,
    workers: Optional[int] = None,
    chunk_docs: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    sources: Optional[list[str]] = None,
    chunk_chars: int = 1 << 16,
    start_method: Optional[str] = None,
) -> PreprocessSummary:
    """Encode ``documents`` with ``workers`` processes and write ``output_prefix.{bin,idx,meta.json}`` atomically.

    ``workers=None`` uses every core; ``workers<=1`` encodes in this process. Work is sent to workers
    in tasks of at most ``chunk_docs`` documents or ~``chunk_chars`` characters (long articles would
    otherwise make a few huge tasks and idle workers). Empty corpora raise; an existing output is
    refused unless ``overwrite``.
    """
    tok = as_tokenizer(tokenizer)
    prefix = str(Path(output_prefix).expanduser().absolute())
    _check_outputs([prefix], overwrite)
    created = _missing_dirs(prefix)
    tmp = _staging_dir(prefix)
    try:
        summary = _encode_into(documents, tok, os.path.join(tmp, "data"), prefix, _num_workers(workers), chunk_docs,
                               chunk_chars, start_method, progress, sources)
        _publish([(os.path.join(tmp, "data"), prefix)])
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_if_empty(created)
        _name_the_output(exc, prefix)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    _log_summary(summary)
    return summary


def output_prefix_for(output_prefix: str, split: Optional[str]) -> str:
    """Megatron's naming: ``PREFIX_text_document`` or ``PREFIX_<split>_text_document``."""
    return f"{output_prefix}_{split}_text_document" if split else f"{output_prefix}_text_document"


def preprocess_corpus(
    input: str | os.PathLike,
    tokenizer: Tokenizer | str | os.PathLike,
    output_prefix: str | os.PathLike,
    workers: Optional[int] = None,
    text_field: str = "text",
    group: str = "auto",
    chunk_docs: int = 16,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, PreprocessSummary]:
    """Tokenize a file, a directory, or a WikiText split directory into indexed datasets.

    A directory holding ``wiki.{train,valid,test}.raw`` (or ``.tokens``, or HF ``train``/
    ``validation``/``test`` parquet/JSONL) gives one dataset per split, keyed by split name;
    anything else gives one dataset keyed ``all``. The splits are written as a set: all are encoded
    into one hidden directory first and moved into place together (their ``.meta.json`` carry the
    same ``set`` id). Existing outputs are refused unless ``overwrite``. Returns the summaries.
    """
    tok = as_tokenizer(tokenizer)
    splits = find_wikitext_splits(input)
    plan = splits if splits else {"all": list_input_files(input)}
    base = str(Path(output_prefix).expanduser().absolute())
    prefixes = {name: output_prefix_for(base, None if name == "all" else name) for name in plan}
    _check_outputs(prefixes.values(), overwrite)
    dataset_set = {"id": uuid.uuid4().hex, "splits": sorted(plan)}
    created = _missing_dirs(base)
    tmp = _staging_dir(base)
    results = {}
    try:
        for name, files in plan.items():
            results[name] = _encode_into(iter_documents(files, text_field=text_field, group=group), tok,
                                         os.path.join(tmp, name), prefixes[name], _num_workers(workers), chunk_docs,
                                         1 << 16, None, progress, [str(f) for f in files], dataset_set)
        _publish([(os.path.join(tmp, name), prefixes[name]) for name in plan])
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_if_empty(created)
        _name_the_output(exc, base)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    for summary in results.values():
        _log_summary(summary)
    return results
