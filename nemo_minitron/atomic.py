"""Atomic outputs: write into a hidden sibling directory, rename into place only when complete.

Every result directory the library writes (checkpoints, conversions, corpora) goes through here, so
an interrupted job never leaves a directory that looks complete, and an existing result is swapped
out only after its replacement is whole. :func:`collective_atomic_dir` is the multi-rank variant:
rank 0 creates and renames, every rank writes its part in between.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Union

import torch.distributed as dist

PathLike = Union[str, os.PathLike]


def is_rank0() -> bool:
    """True on global rank 0, or when torch.distributed is not initialised."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """``dist.barrier()`` when a process group exists; a no-op in a plain process."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_from_rank0(obj):
    """Rank 0's (picklable) ``obj`` on every rank; ``obj`` itself in a plain process."""
    if not dist.is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def temp_sibling(final: Path) -> Path:
    """A unique hidden name next to ``final`` for its in-progress contents."""
    return final.parent / f".{final.name}.incomplete-{os.getpid()}-{time.time_ns()}"


def replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; an existing ``final`` is moved aside first and deleted only afterwards."""
    backup = None
    if final.exists():
        backup = final.parent / f".{final.name}.old-{os.getpid()}-{time.time_ns()}"
        os.replace(final, backup)
    os.replace(tmp, final)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True) if backup.is_dir() else backup.unlink()


@contextlib.contextmanager
def atomic_dir(path: PathLike, overwrite: bool = False, exists_error: type = FileExistsError) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` when the ``with`` block succeeds (one process).

    On an exception the temporary directory is removed and ``path`` is left untouched. An existing
    ``path`` raises ``exists_error`` unless ``overwrite`` is set.
    """
    final = Path(path).absolute()
    if final.exists() and not overwrite:
        raise exists_error(f"output {final} already exists; set overwrite=true or choose another output path")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


@contextlib.contextmanager
def collective_atomic_dir(path: PathLike) -> Iterator[Path]:
    """Multi-rank :func:`atomic_dir`: every rank gets the same temporary directory (created by rank 0).

    After the block every rank waits for the others, then rank 0 renames the directory into place
    (replacing an existing one) and the ranks wait once more, so the result is visible everywhere on
    return. Callers check for an existing output themselves. On an exception rank 0 removes the
    temporary directory; no collective is entered.
    """
    final = Path(path).absolute()
    name = None
    if is_rank0():
        final.parent.mkdir(parents=True, exist_ok=True)
        name = str(temp_sibling(final))
        os.makedirs(name)
    tmp = Path(broadcast_from_rank0(name))
    barrier()
    try:
        yield tmp
    except BaseException:
        if is_rank0():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    if is_rank0():
        replace_dir(tmp, final)
    barrier()
