"""Rank-aware logging.

Every library message goes through :func:`get_logger`. Under ``torch.distributed`` only global
rank 0 logs at INFO and below by default (other ranks log warnings and errors), and each record
carries its rank so interleaved multi-process output stays readable.
"""

from __future__ import annotations

import logging
import os
import sys

_ROOT = "nemo_minitron"
_configured = False


def _rank() -> int:
    """Global rank from torch.distributed if initialised, else from the launcher's environment."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except Exception:  # pragma: no cover - torch missing or broken
        pass
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            try:
                return int(os.environ[key])
            except ValueError:
                pass
    return 0


class _RankFilter(logging.Filter):
    """Adds ``record.rank``; drops sub-WARNING records on ranks other than 0 unless asked not to."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = _rank()
        if os.environ.get("NEMO_MINITRON_LOG_ALL_RANKS", "0") == "1":
            return True
        return record.rank == 0 or record.levelno >= logging.WARNING


def _configure() -> None:
    global _configured
    if _configured:
        return
    root = logging.getLogger(_ROOT)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s rank%(rank)s %(levelname)s %(name)s] %(message)s", "%H:%M:%S")
        )
        handler.addFilter(_RankFilter())
        root.addHandler(handler)
        root.setLevel(os.environ.get("NEMO_MINITRON_LOG_LEVEL", "INFO").upper())
        root.propagate = False
    _configured = True


def get_logger(name: str) -> logging.Logger:
    """Return a logger under the ``nemo_minitron`` hierarchy with the rank-aware handler installed."""
    _configure()
    if not name.startswith(_ROOT):
        name = f"{_ROOT}.{name}"
    return logging.getLogger(name)
