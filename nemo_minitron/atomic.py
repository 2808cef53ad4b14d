"""Atomic outputs: write into a hidden sibling directory, rename into place only when complete.

Every result directory the library writes (checkpoints, conversions, corpora) goes through here, so
an interrupted job never leaves a directory that looks complete, and an existing result is swapped
out only after its replacement is whole. :func:`collective_atomic_dir` is the multi-rank variant:
rank 0 creates and renames, every rank writes its part in between.

Every writer first calls :func:`check_output_path`: an output path that is empty, the current
directory, ``/``, the home directory or a directory holding one of the inputs is refused, and an
existing output is replaced (with ``overwrite=true``) only when it is a complete output of ours
(it holds the marker file its writer names, e.g. a checkpoint's ``COMPLETE``) or an empty directory. Hidden
temporary siblings left by a killed run (``.X.incomplete-<pid>-*``, ``.X.old-<pid>-*`` and the
other ``<pid>``-tagged names of :data:`TEMP_TAGS`) are removed by the next writer of ``X`` once
their process is gone.

A SIGTERM never publishes a half output: the rename into place first checks for a termination
request (:mod:`nemo_minitron.termination`; every rank agrees on it in :func:`collective_atomic_dir`)
and the renames themselves are not interrupted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch
import torch.distributed as dist

from nemo_minitron import termination
from nemo_minitron.paths import PathLike

TEMP_TAGS = ("incomplete", "old", "nemo2-extract", "tmp")
"""Tags of the hidden temporary siblings ``.<name>.<tag>-<pid>...`` our writers create."""


class UnsafeOutputError(ValueError):
    """An output path that must never be written to (or replaced) was given."""


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(final: PathLike) -> list[Path]:
    """Remove hidden temporary siblings of ``final`` whose writing process no longer exists; returns them."""
    final = Path(final).absolute()
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(?:{'|'.join(TEMP_TAGS)})-(\d+)")
    removed = []
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


def private_temp_dir(tag: str) -> Path:
    """A new directory ``$TMPDIR/nm_<tag>_<pid>_*``; those left by processes that are gone are removed first."""
    base = Path(tempfile.gettempdir())
    pattern = re.compile(rf"^nm_{re.escape(tag)}_(\d+)_")
    for entry in base.glob(f"nm_{tag}_*"):
        m = pattern.match(entry.name)
        if m is not None and entry.is_dir() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"nm_{tag}_{os.getpid()}_", dir=base))


def _is_ours(path: Path, markers: Iterable[str]) -> bool:
    if path.is_dir():
        return any((path / m).is_file() for m in markers) or not any(path.iterdir())
    return False


def check_output_path(path: PathLike, key: str = "output_path", overwrite: bool = False,
                      inputs: Iterable[Optional[PathLike]] = (), markers: Iterable[str] = (),
                      exists_error: type = FileExistsError, is_dir: bool = True) -> Path:
    """Validate an output path before anything is written; returns it absolute.

    Refuses (``UnsafeOutputError``) an empty path, the current directory, ``/``, the home directory,
    an existing non-directory where a directory is written, and a directory that holds (or is) one of
    ``inputs``. An existing output raises ``exists_error`` unless ``overwrite``; with ``overwrite``
    it must be a complete output of ours (holding one of the ``markers`` files) or empty.
    ``is_dir=False`` checks a file output (only the location rules and ``overwrite`` apply).
    Stale temporary siblings of the path are cleaned up on the way.
    """
    if path is None or not str(path).strip():
        raise UnsafeOutputError(f"{key} is empty; give the directory to write (an unset variable in a script?)")
    final = Path(os.path.expanduser(str(path))).absolute()
    resolved = final.resolve()
    forbidden = {Path("/").resolve(): "the filesystem root", Path.cwd().resolve(): "the current directory",
                 Path.home().resolve(): "the home directory"}
    if resolved in forbidden:
        raise UnsafeOutputError(f"{key}={path} is {forbidden[resolved]}; give a new directory for the output")
    for inp in inputs:
        if inp is None or not str(inp).strip():
            continue
        src = Path(os.path.expanduser(str(inp))).absolute().resolve()
        if src == resolved or resolved in src.parents:
            raise UnsafeOutputError(f"{key}={path} contains the input {inp}; write the output somewhere else")
    if final.exists() or final.is_symlink():
        if not overwrite:
            raise exists_error(f"{key}={final} already exists; set overwrite=true or choose another output path")
        if is_dir and not _is_ours(final, markers):
            found = " or ".join(markers) if markers else "nothing: only an empty directory can be replaced"
            raise UnsafeOutputError(f"{key}={final} exists and is not an output of nemo_minitron (looked for "
                                    f"{found}); refusing to replace it even with overwrite=true. Remove it yourself "
                                    "or choose another output path")
    if is_rank0():
        clean_stale_temps(final)
    return final


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


def any_rank(flag: bool) -> bool:
    """Collective: True on every rank when ``flag`` is true on any rank (``flag`` itself in a plain process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def temp_sibling(final: Path) -> Path:
    """A unique hidden name next to ``final`` for its in-progress contents."""
    return final.parent / f".{final.name}.incomplete-{os.getpid()}-{time.time_ns()}"


def replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; an existing ``final`` is moved aside first and deleted only afterwards.

    Raises :class:`~nemo_minitron.termination.Terminated` instead, moving nothing, when a SIGTERM was
    received (the caller removes ``tmp``). A SIGTERM arriving during the renames takes effect after
    them, so ``final`` is always either the old or the new complete output.
    """
    with termination.deferred():
        termination.check()
        backup = None
        if final.exists():
            backup = final.parent / f".{final.name}.old-{os.getpid()}-{time.time_ns()}"
            os.replace(final, backup)
        os.replace(tmp, final)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True) if backup.is_dir() else backup.unlink()
    termination.check()


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of the file ``path``; it replaces ``path`` when the ``with`` block succeeds.

    On an exception the temporary file is removed and ``path`` is left untouched (one process).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_file`; returns the path."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: PathLike, overwrite: bool = False, exists_error: type = FileExistsError,
               markers: Iterable[str] = (), key: str = "output_path") -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` when the ``with`` block succeeds (one process).

    On an exception the temporary directory is removed and ``path`` is left untouched. An existing
    ``path`` raises ``exists_error`` unless ``overwrite`` is set; :func:`check_output_path` applies.
    """
    final = check_output_path(path, overwrite=overwrite, exists_error=exists_error, markers=markers, key=key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
        clean_stale_temps(final)
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
    try:  # every rank waits for the others here, and all stop alike if any was asked to terminate
        if any_rank(termination.requested() is not None):
            raise termination.Terminated(termination.PREEMPTED_EXIT_CODE)
        if is_rank0():
            replace_dir(tmp, final)
    except BaseException:
        if is_rank0() and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
