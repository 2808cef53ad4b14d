"""Pre-emption handling: SIGTERM / SIGUSR1 / Ctrl-C ask the trainer to checkpoint and exit at the next step boundary.

SLURM sends SIGTERM (or the signal chosen with ``--signal``, commonly SIGUSR1) some time before it
kills a job. The handler only records the request; the training loop agrees on it across ranks
(:func:`stop_requested` is a MAX all-reduce, so one signalled rank is enough) and then saves.

Exit codes of the training entry points after such a stop (the checkpoint is saved; the same command
resumes): :data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``) after SIGTERM/SIGUSR1, so a batch script
can requeue (``[ $? -eq 75 ] && scontrol requeue $SLURM_JOB_ID``) and ``distill && export`` stops;
:data:`INTERRUPTED_EXIT_CODE` (130) after Ctrl-C. A second Ctrl-C aborts at once without saving.
"""

from __future__ import annotations

import signal
from typing import Iterable

import torch
import torch.distributed as dist

from nemo_minitron.logging import get_logger

log = get_logger(__name__)

#: Exit code after a SIGTERM / SIGUSR1 pre-emption that saved a checkpoint (sysexits ``EX_TEMPFAIL``).
PREEMPTED_EXIT_CODE = 75
#: Exit code after Ctrl-C (SIGINT) that saved a checkpoint (the shell's 128 + SIGINT).
INTERRUPTED_EXIT_CODE = 130

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
    flag = torch.tensor([1 if local_request() else 0], dtype=torch.int32)
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
