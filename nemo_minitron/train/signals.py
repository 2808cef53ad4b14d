"""Pre-emption handling: SIGTERM / SIGUSR1 / Ctrl-C ask the trainer to checkpoint and exit at the next step boundary.

SLURM sends SIGTERM (or the signal chosen with ``--signal``, commonly SIGUSR1) some time before it
kills a job. The handler only records the request; the training loop agrees on it across ranks
(:func:`stop_requested` is a MAX all-reduce, so one signalled rank is enough) and then saves.

Exit codes of the training entry points after such a stop (the checkpoint is saved; the same command
resumes) are those of every command (:mod:`nemo_minitron.termination`): :data:`PREEMPTED_EXIT_CODE`
(143) after SIGTERM/SIGUSR1, so a batch script can requeue (``[ $? -eq 143 ] && scontrol requeue
$SLURM_JOB_ID``) and ``distill && export`` stops; :data:`INTERRUPTED_EXIT_CODE` (130) after Ctrl-C.
A second Ctrl-C aborts at once without saving.
"""

from __future__ import annotations

import signal
from typing import Iterable

from nemo_minitron.atomic import any_rank
from nemo_minitron.logging import get_logger
from nemo_minitron.termination import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE

log = get_logger(__name__)

__all__ = ["PREEMPTED_EXIT_CODE", "INTERRUPTED_EXIT_CODE", "exit_code", "install", "uninstall", "reset",
           "local_request", "request_stop", "stop_requested"]

_requested = {"signal": None}
_previous: dict[int, object] = {}


def _handler(signum, frame) -> None:  # pragma: no cover - exercised through a subprocess test
    if signum == signal.SIGINT and _requested["signal"] == signal.SIGINT:
        raise KeyboardInterrupt  # second Ctrl-C: abort now
    _requested["signal"] = signum
    extra = " (press Ctrl-C again to abort without saving)" if signum == signal.SIGINT else ""
    log.warning("received signal %d: will save a checkpoint and stop after the current step%s", signum, extra)


def exit_code() -> int:
    """The documented exit code for the stop that was requested (pre-emption unless it was Ctrl-C)."""
    return INTERRUPTED_EXIT_CODE if _requested["signal"] == signal.SIGINT else PREEMPTED_EXIT_CODE


def install(signals: Iterable[int] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)) -> None:
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


def reset() -> None:
    """Forget a recorded stop request (a new training run starts)."""
    _requested["signal"] = None


def local_request() -> bool:
    """True when this process received a stop signal."""
    return _requested["signal"] is not None


def request_stop() -> None:
    """Ask for a stop as if a signal had arrived (tests, programmatic pre-emption)."""
    _requested["signal"] = -1


def stop_requested() -> bool:
    """Collective: True on every rank when any rank received a stop signal."""
    return any_rank(local_request())
