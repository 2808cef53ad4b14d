"""Safe file handling for checkpoint conversion: atomic output directories and archive extraction.

* :func:`atomic_output_dir` writes into a hidden sibling directory and renames it into place only
  when the block finishes without an exception, so an interrupted conversion never leaves a
  directory that looks complete.
* :func:`safe_extract_tar` / :func:`safe_extract_zip` refuse members whose path (or link target)
  would land outside the destination, absolute paths, device files and ``..`` tricks.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path

from nemo_minitron.atomic import atomic_dir
from nemo_minitron.paths import PathLike


class UnsafeArchiveError(RuntimeError):
    """An archive member would be written outside the extraction directory (or is a device file)."""


class OutputExistsError(FileExistsError):
    """The conversion output already exists and ``overwrite`` was not requested."""


def _inside(root: Path, target: Path) -> bool:
    root, target = root.resolve(), target.resolve()
    return target == root or root in target.parents


def atomic_output_dir(path: PathLike, overwrite: bool = False, markers: tuple[str, ...] = ()):
    """:func:`nemo_minitron.atomic.atomic_dir` raising :class:`OutputExistsError` for an existing output.

    With ``overwrite`` an existing directory is replaced only if it holds one of ``markers`` (or is empty).
    """
    return atomic_dir(path, overwrite=overwrite, exists_error=OutputExistsError, markers=markers)


def safe_extract_tar(archive: PathLike, dest: PathLike) -> Path:
    """Extract a tar archive into ``dest``; raise :class:`UnsafeArchiveError` on any escaping member."""
    dest_path = Path(dest)
    dest_path.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            target = dest_path / m.name
            if os.path.isabs(m.name) or not _inside(dest_path, target):
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} would be extracted outside {dest_path}")
            if m.isdev() or m.isfifo():
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device or FIFO")
            if m.issym() or m.islnk():
                link = Path(m.linkname)
                resolved = (target.parent / link) if m.issym() else (dest_path / link)
                if link.is_absolute() or not _inside(dest_path, resolved):
                    raise UnsafeArchiveError(f"{archive}: link {m.name!r} -> {m.linkname!r} points outside {dest_path}")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 / patched 3.8+: belt and braces
            tar.extractall(dest_path, members=members, filter="data")
        else:  # pragma: no cover
            tar.extractall(dest_path, members=members)
    return dest_path


def safe_extract_zip(archive: PathLike, dest: PathLike, members: list[str] | None = None) -> Path:
    """Extract a zip archive (e.g. a wheel) into ``dest``, refusing members that escape it."""
    dest_path = Path(dest)
    dest_path.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist() if members is None else members
        for name in names:
            if os.path.isabs(name) or name.startswith(("/", "\\")) or not _inside(dest_path, dest_path / name):
                raise UnsafeArchiveError(f"{archive}: member {name!r} would be extracted outside {dest_path}")
        for name in names:
            zf.extract(name, dest_path)
    return dest_path
