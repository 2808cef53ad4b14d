"""Read text corpora as a stream of documents: WikiText raw/token files, JSONL, parquet, text directories.

WikiText (Merity et al., 2016) stores Wikipedia articles one after another; each article starts
with a top-level heading line `` = Title = `` (sections are `` = = Section = = ``) and paragraphs
are separated by blank lines. :func:`split_wikitext` cuts such text back into articles, which is
what "document" means for WikiText everywhere in this package. Hugging Face's ``wikitext``
parquet/JSONL stores the same files one *line* per row; :func:`iter_documents` notices that (rows
that are top-level headings) and regroups the rows into articles.

Supported inputs (:func:`iter_documents`):

* ``*.raw`` / ``*.tokens`` (WikiText), ``*.txt``: WikiText-style files are split at top-level
  headings; other text files are one document each;
* ``*.jsonl`` / ``*.json`` (one JSON object per line) and ``*.parquet``: one document per row,
  taken from ``text_field``;
* a directory: its files in sorted order (recursively), each read as above.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, Optional

__all__ = ["split_wikitext", "is_top_heading", "iter_documents", "list_input_files", "find_wikitext_splits",
           "DataInputError", "TEXT_SUFFIXES", "check_text_file"]

TEXT_SUFFIXES = (".raw", ".tokens", ".txt", ".jsonl", ".json", ".parquet")
_TOP_HEADING = re.compile(r"^ ?= (?!=)(.*\S) = ?$")


class DataInputError(ValueError):
    """An input file or directory cannot be read as a corpus."""


def is_top_heading(line: str) -> bool:
    """True for a WikiText article heading such as `` = Valkyria Chronicles III = `` (not `` = = Sub = = ``)."""
    line = line.rstrip("\r\n")
    return bool(_TOP_HEADING.match(line)) and not line.strip().startswith("= =")


def _clean_document(lines: list[str]) -> Optional[str]:
    """Join an article's lines; None when nothing but whitespace is left."""
    text = "".join(lines).strip()
    return text if text else None


def split_wikitext(lines: Iterable[str]) -> Iterator[str]:
    """Group WikiText lines (each ending in a newline) into articles, cut before every top-level heading.

    Text before the first heading becomes its own document. Leading/trailing whitespace of each
    article is stripped; internal layout (headings, blank lines) is kept as in the file.
    """
    current: list[str] = []
    for line in lines:
        if is_top_heading(line) and current:
            doc = _clean_document(current)
            if doc is not None:
                yield doc
            current = []
        current.append(line if line.endswith("\n") else line + "\n")
    doc = _clean_document(current)
    if doc is not None:
        yield doc


def _looks_like_wikitext(first_lines: list[str]) -> bool:
    """The first non-blank line is a top-level WikiText heading."""
    for line in first_lines:
        if line.strip():
            return is_top_heading(line)
    return False


_SNIFF_BYTES = 1 << 16
_CONTROL = frozenset(range(32)) - {9, 10, 12, 13}


def check_text_file(path: str | os.PathLike) -> None:
    """Raise :class:`DataInputError` unless the start of ``path`` is UTF-8 text (no NUL or control bytes)."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the sniffed block
            raise DataInputError(f"{path} is not UTF-8 text (undecodable byte at offset {exc.start}); give a text, "
                                 "JSONL or parquet corpus") from None
    bad = sum(1 for b in head if b in _CONTROL)
    if bad and (b"\x00" in head or bad > len(head) // 100):
        raise DataInputError(f"{path} is not text ({bad} control/NUL bytes in its first {len(head)} bytes); "
                             "give a text, JSONL or parquet corpus")


def _decode_errors(path: Path, lines: Iterable[str]) -> Iterator[str]:
    try:
        yield from lines
    except UnicodeDecodeError as exc:
        raise DataInputError(f"{path} is not UTF-8 text ({exc.reason} near byte {exc.start} of a block); "
                             "give a text, JSONL or parquet corpus") from None


def _iter_text_file(path: Path) -> Iterator[str]:
    check_text_file(path)
    with open(path, encoding="utf-8") as f:
        yield from _decode_errors(path, _text_file_documents(path, f))


def _text_file_documents(path: Path, f) -> Iterator[str]:
    head = [f.readline() for _ in range(8)]
    f.seek(0)
    if path.suffix in (".raw", ".tokens") or _looks_like_wikitext(head):
        yield from split_wikitext(f)
        return
    text = f.read().strip()
    if text:
        yield text


def _rows_to_documents(rows: Iterable[str], group: str) -> Iterator[str]:
    """One document per row, or WikiText regrouping when rows are lines of a WikiText file."""
    rows = iter(rows)
    head: list[str] = []
    for row in rows:
        head.append(row)
        if row.strip() or len(head) > 64:
            break
    wikitext = group == "wikitext" or (group == "auto" and _looks_like_wikitext(head))
    if group not in ("auto", "wikitext", "row"):
        raise DataInputError(f"group={group!r} must be auto, wikitext or row")

    def all_rows() -> Iterator[str]:
        yield from head
        yield from rows

    if wikitext:
        yield from split_wikitext(all_rows())
        return
    for row in all_rows():
        row = row.strip()
        if row:
            yield row


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    check_text_file(path)
    with open(path, encoding="utf-8") as f:
        yield from _decode_errors(path, _jsonl_rows(path, f, text_field))


def _jsonl_rows(path: Path, f, text_field: str) -> Iterator[str]:
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataInputError(f"{path}:{lineno}: not a JSON object per line ({exc.msg})") from None
        if not isinstance(obj, dict) or text_field not in obj:
            keys = list(obj) if isinstance(obj, dict) else type(obj).__name__
            raise DataInputError(f"{path}:{lineno}: text_field={text_field!r} not found (keys: {keys})")
        value = obj[text_field]
        yield "" if value is None else str(value)


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise DataInputError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from exc
    pf = pq.ParquetFile(str(path))
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataInputError(f"{path}: text_field={text_field!r} not a parquet column (columns: {names})")
    for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            yield "" if value is None else str(value)


def list_input_files(path: str | os.PathLike) -> list[Path]:
    """The corpus files of ``path``: the file itself, or a directory's text files in sorted order."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataInputError(f"input={str(path)!r} does not exist")
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    if not files:
        raise DataInputError(f"input={str(path)!r}: no {'/'.join(TEXT_SUFFIXES)} files in the directory")
    return files


def _iter_rows(files: list[Path], text_field: str) -> Iterator[str]:
    for f in files:
        if f.suffix.lower() == ".parquet":
            yield from _iter_parquet(f, text_field)
        else:
            yield from _iter_jsonl(f, text_field)


def iter_documents(path: str | os.PathLike | list, text_field: str = "text", group: str = "auto") -> Iterator[str]:
    """Yield the documents of a file, a directory or a list of files (see the module docstring for formats).

    ``group`` applies to JSONL/parquet rows: ``auto`` regroups rows into WikiText articles when
    the first row is a top-level heading, ``wikitext`` always does, ``row`` never does.
    Consecutive JSONL/parquet files are read as one row stream, so an article cut across shards
    (Hugging Face's ``train-00000-of-00002.parquet``, ...) stays whole.
    """
    files = [Path(f) for f in path] if isinstance(path, (list, tuple)) else list_input_files(path)
    run: list[Path] = []
    for f in [*files, None]:
        if f is not None and f.suffix.lower() in (".jsonl", ".json", ".parquet"):
            run.append(f)
            continue
        if run:
            yield from _rows_to_documents(_iter_rows(run, text_field), group)
            run = []
        if f is not None:
            yield from _iter_text_file(f)


_SPLIT_NAMES = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}


def find_wikitext_splits(path: str | os.PathLike) -> Optional[dict[str, list[Path]]]:
    """Map split name → its files (in order) for a WikiText-style split directory; None for anything else.

    Recognised: ``wiki.{train,valid,test}.{raw,tokens}`` and HF-style ``train``/``validation``/``test``
    parquet or JSONL files, possibly sharded (``train-00000-of-00002.parquet``, ...).
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        return None
    found: dict[str, list[Path]] = {}
    for f in sorted(p.iterdir()):
        if not f.is_file() or f.suffix.lower() not in TEXT_SUFFIXES:
            continue
        m = re.match(r"^(?:wiki\.)?(train|valid|validation|test)(?:[.\-_].*)?$", f.stem)
        if m is None:
            continue
        split = _SPLIT_NAMES[m.group(1)]
        if split in found and found[split][0].suffix != f.suffix:
            raise DataInputError(f"input={str(path)!r}: split {split} has both {found[split][0].name} and {f.name}; "
                                 "keep one format (e.g. .raw or .tokens) in the directory")
        found.setdefault(split, []).append(f)
    return found if "train" in found else None
