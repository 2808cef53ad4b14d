"""Termination requests and the exit codes every command ends with after a signal (one convention).

Exit codes, the same for every entry point (the shell's ``128 + signal``):

* :data:`PREEMPTED_EXIT_CODE` (143) after SIGTERM (or SIGUSR1 during training): the command stopped
  early. Training saved a checkpoint and the same command resumes; any other command left the
  previous complete output (or none) and removed its temporary files. SLURM batch scripts requeue
  with ``[ $? -eq 143 ] && scontrol requeue $SLURM_JOB_ID``; ``distill && export`` stops.
* :data:`INTERRUPTED_EXIT_CODE` (130) after Ctrl-C.

Outside training (:mod:`nemo_minitron.train.signals` has its own save-then-stop handler),
:func:`on_sigterm` records the request and raises :class:`Terminated` in the main thread so that
``finally`` blocks remove temporary directories. Python can lose that exception: a signal handled
while an ``os.fork`` hook runs (megatron-core's checkpoint writer forks; ``logging`` registers fork
hooks) raises into the hook, and exceptions from fork hooks are only printed. So the request is
also recorded, and the last step of every output, the rename into place
(:func:`nemo_minitron.atomic.replace_dir`), checks it first; :func:`nemo_minitron.cli.run` exits
143 whenever it is set, however the command's main function ended.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator, Optional

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM
"""Exit code after SIGTERM (and SIGUSR1 during training): stopped early, rerun the same command (143)."""
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT
"""Exit code after Ctrl-C (130)."""

_state: dict = {"signal": None, "defer": 0}


class Terminated(SystemExit):
    """Raised in the main thread after SIGTERM, so cleanup code runs before the process exits 143."""


def on_sigterm(signum, frame) -> None:
    """SIGTERM handler of the commands: record the request, then raise :class:`Terminated` (unless deferred)."""
    _state["signal"] = signum
    if not _state["defer"]:
        raise Terminated(PREEMPTED_EXIT_CODE)


def requested() -> Optional[int]:
    """The signal number of a recorded termination request, or None."""
    return _state["signal"]


def clear() -> None:
    """Forget a recorded request (a new command starts in this process; forked children start clean)."""
    _state["signal"] = None
    _state["defer"] = 0


def check() -> None:
    """Raise :class:`Terminated` when a termination was requested (also one whose exception was lost)."""
    if _state["signal"] is not None:
        raise Terminated(PREEMPTED_EXIT_CODE)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block SIGTERM does not interrupt (it is recorded; call :func:`check` afterwards)."""
    _state["defer"] += 1
    try:
        yield
    finally:
        _state["defer"] -= 1
