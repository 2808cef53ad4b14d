"""Pre-emption handling: SIGTERM / SIGUSR1 ask the trainer to checkpoint and exit at the next step boundary.

SLURM sends SIGTERM (or the signal chosen with ``--signal``, commonly SIGUSR1) some time before it
kills a job. The handler only records the request; the training loop agrees on it across ranks
(:func:`stop_requested` is a MAX all-reduce, so one signalled rank is enough) and then saves.
"""

from __future__ import annotations

import signal
from typing import Iterable

import torch
import torch.distributed as dist

from nemo_minitron.logging import get_logger

log = get_logger(__name__)

_requested = {"signal": None}
_previous: dict[int, object] = {}


def _handler(signum, frame) -> None:  # pragma: no cover - exercised through a subprocess test
    _requested["signal"] = signum
    log.warning("received signal %d: will save a checkpoint and stop after the current step", signum)


def install(signals: Iterable[int] = (signal.SIGTERM, signal.SIGUSR1)) -> None:
    """Install the handler for ``signals`` (main thread only; no-op elsewhere)."""
    for s in signals:
        try:
            _previous[s] = signal.signal(s, _handler)
        except ValueError:  # not in the main thread
            return


def uninstall() -> None:
    """Restore the handlers that were active before :func:`install`."""
    for s, h in _previous.items():
        signal.signal(s, h)  # type: ignore[arg-type]
    _previous.clear()
    _requested["signal"] = None


def local_request() -> bool:
    """True when this process received a stop signal."""
    return _requested["signal"] is not None


def request_stop() -> None:
    """Ask for a stop as if a signal had arrived (tests, programmatic pre-emption)."""
    _requested["signal"] = -1


def stop_requested() -> bool:
    """Collective: True on every rank when any rank received a stop signal."""
    flag = torch.tensor([1 if local_request() else 0], dtype=torch.int32)
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
