"""The wrapper every ``examples/*.py`` entry point runs through: user errors as a few clear lines.

:func:`run` calls a ``@hydra.main`` function and turns a *user error* (a bad key or value, a missing
or incompatible file, a refused output path, an OS error naming a path, Hydra's and OmegaConf's own
override errors) into ``error: <message>`` on stderr and exit status :data:`EXIT_USER_ERROR`, with no
traceback. Anything else is a bug and keeps its traceback. ``NEMO_MINITRON_VERBOSE=1`` (or Hydra's
``HYDRA_FULL_ERROR=1``) re-raises user errors too, with the full trace.

It also makes sure no helper process outlives the command: forked children get a parent-death
signal and the default SIGTERM action, and SIGTERM unwinds the main thread (``finally`` blocks
remove temporary directories) before the process exits with status 143
(:mod:`nemo_minitron.termination`), also when the signal's exception was lost on the way.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Callable, Optional

from nemo_minitron import termination
from nemo_minitron.termination import Terminated  # noqa: F401  (re-exported: raised by SIGTERM in a command)

EXIT_USER_ERROR = 2
"""Exit status of a run refused because of its input (config, files, output path)."""
EXIT_SIGTERM = termination.PREEMPTED_EXIT_CODE
"""Exit status after SIGTERM (143), the same in training (which saves first) and in every other command."""
VERBOSE_ENV = "NEMO_MINITRON_VERBOSE"
"""Environment variable: ``1`` shows the full traceback of user errors."""

_PR_SET_PDEATHSIG = 1


def verbose() -> bool:
    """True when the user asked for full tracebacks."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0") or os.environ.get("HYDRA_FULL_ERROR", "") == "1"


_prctl: list = []


def _load_prctl():
    """The C library's ``prctl``, looked up once (never ``dlopen`` in a forked child: the loader's lock may be held there)."""
    if not _prctl:
        try:
            _prctl.append(ctypes.CDLL(None, use_errno=True).prctl)
        except (OSError, AttributeError):  # pragma: no cover - no prctl
            _prctl.append(None)
    return _prctl[0]


def die_with_parent() -> None:
    """In a child process: ask the kernel to SIGKILL it when its parent dies (Linux; no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    prctl = _load_prctl()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_fork_hook_installed = False


def _after_fork_in_child() -> None:
    """A forked child dies with its parent and on SIGTERM (not the parent's unwinding handler)."""
    die_with_parent()
    termination.clear()
    try:
        if signal.getsignal(signal.SIGTERM) is termination.on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (ValueError, OSError):  # pragma: no cover - not the main thread of the child
        pass


def install_child_hygiene() -> None:
    """Forked children (dataloader / tokenizer / checkpoint-writer workers) die with this process and on SIGTERM."""
    global _fork_hook_installed
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        if sys.platform.startswith("linux"):
            _load_prctl()
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_installed = True


def user_error_types() -> tuple[type, ...]:
    """Exception types that describe a problem with the user's input, not a bug."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from nemo_minitron.atomic import UnsafeOutputError
    from nemo_minitron.checkpoint import CheckpointError
    from nemo_minitron.config.model import ConfigError
    from nemo_minitron.data.integrity import DataIntegrityError
    from nemo_minitron.data.tokenizer import TokenizerError
    from nemo_minitron.data.wikitext import DataInputError
    from nemo_minitron.interop.safety import UnsafeArchiveError

    return (ConfigError, CheckpointError, DataIntegrityError, DataInputError, TokenizerError, UnsafeOutputError,
            UnsafeArchiveError, OSError, HydraException, OmegaConfBaseException)


def _omegaconf_lines(exc: BaseException) -> list[str]:
    """The first line of an OmegaConf error plus the key it concerns."""
    text = str(exc).strip().splitlines()
    lines = [text[0]] if text else [type(exc).__name__]
    key = getattr(exc, "full_key", None)
    if key and key not in lines[0]:
        lines[0] += f" (key: {key})"
    return lines


def error_lines(exc: BaseException) -> list[str]:
    """The few lines printed for a user error."""
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, OmegaConfBaseException):
        return _omegaconf_lines(exc)
    text = str(exc).strip()
    if "Traceback (most recent call last)" in text:  # a wrapped error carrying its own trace: keep its last line
        head, _, tail = text.partition("Traceback (most recent call last)")
        tail_lines = [ln for ln in tail.splitlines() if ln.strip() and ln.strip() != ")"]
        text = head.strip() + (f" {tail_lines[-1].strip()}" if tail_lines else "")
    lines = [ln for ln in text.splitlines() if ln.strip()] or [type(exc).__name__]
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException):  # Hydra wraps the OmegaConf error saying which key
        lines += _omegaconf_lines(cause)
    if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None and exc.strerror:
        lines = [f"{exc.strerror}"]
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in " ".join(lines):
        lines[0] += f" ({exc.filename})"
    lines = [ln for ln in lines if "HYDRA_FULL_ERROR" not in ln]
    for i, ln in enumerate(lines):  # Hydra lists the choices of a config group one per line
        if ln.strip().lower().startswith("available options") and i + 1 < len(lines):
            rest = [x.strip() for x in lines[i + 1:]]
            rest = rest[:rest.index("Config search path:")] if "Config search path:" in rest else rest
            lines = lines[:i] + [ln.strip().rstrip(":") + ": " + ", ".join(x for x in rest if x != "schema")]
            break
    return lines[:8]


class _QuietHydraStderr:
    """stderr minus Hydra's "Error executing job with overrides" line (:func:`run` reports the error)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith("Error executing job with overrides"):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _prefix() -> str:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return f"[rank {os.environ.get('RANK', '0')}] " if world > 1 else ""


def renamed_overrides(argv: list[str], aliases: dict[str, str]) -> list[str]:
    """``argv`` with ``KEY=value`` (also ``+KEY=`` / ``++KEY=``) written ``aliases[KEY]=value``.

    For a command's own key that shares its name with a Hydra config group (``data`` is one), which
    Hydra would read as a choice of that group.
    """
    out = []
    for arg in argv:
        prefix = arg[:len(arg) - len(arg.lstrip("+"))]
        key, eq, value = arg[len(prefix):].partition("=")
        out.append(f"{prefix}{aliases[key]}={value}" if eq and key in aliases else arg)
    return out


def run(main: Callable[[], object], argv: Optional[list[str]] = None, aliases: Optional[dict[str, str]] = None) -> int:
    """Run a ``@hydra.main`` function as a command; returns 0 or raises ``SystemExit`` with the exit status.

    ``argv`` replaces ``sys.argv[1:]`` (tests call entry points in process this way); ``aliases``
    renames command-line keys (:func:`renamed_overrides`).
    """
    saved_argv = sys.argv
    saved_full_error = os.environ.get("HYDRA_FULL_ERROR")
    if argv is not None or aliases:
        args = list(saved_argv[1:] if argv is None else argv)
        sys.argv = [saved_argv[0] if saved_argv else "nemo_minitron", *renamed_overrides(args, aliases or {})]
    want_trace = verbose()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; this function decides what the user sees
    install_child_hygiene()
    saved_stderr = sys.stderr
    sys.stderr = _QuietHydraStderr(saved_stderr)
    previous_term = None
    termination.clear()
    saved_unraisable = sys.unraisablehook
    sys.unraisablehook = _quiet_lost_termination(saved_unraisable)
    try:
        previous_term = signal.signal(signal.SIGTERM, termination.on_sigterm)
    except ValueError:  # not the main thread
        previous_term = None
    try:
        try:
            main()
        finally:
            sys.stderr = saved_stderr
        termination.check()  # a SIGTERM whose exception was lost (e.g. raised inside an os.fork hook)
    except BaseException as exc:
        if termination.requested() is not None and not isinstance(exc, KeyboardInterrupt):
            if want_trace and not isinstance(exc, termination.Terminated):
                raise
            sys.stderr.write(f"{_prefix()}terminated by SIGTERM: no partial output was left\n")
            raise SystemExit(EXIT_SIGTERM) from None
        if isinstance(exc, KeyboardInterrupt) and not want_trace:
            sys.stderr.write(f"{_prefix()}interrupted\n")
            raise SystemExit(termination.INTERRUPTED_EXIT_CODE) from None
        if want_trace or not isinstance(exc, user_error_types()):
            raise
        lines = error_lines(exc)
        sys.stderr.write(f"{_prefix()}error: {lines[0]}\n")
        for line in lines[1:]:
            sys.stderr.write(f"{_prefix()}  {line}\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_USER_ERROR) from None
    finally:
        sys.argv = saved_argv
        if saved_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_full_error
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        sys.unraisablehook = saved_unraisable
        _clear_hydra()
    return 0


def _quiet_lost_termination(previous):
    """An unraisable-exception hook that drops :class:`Terminated` (recorded anyway; the command still exits 143)."""

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, termination.Terminated):
            return
        previous(unraisable)

    return hook


def _clear_hydra() -> None:
    """Forget Hydra's global state so the next in-process call composes afresh."""
    try:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
    except Exception:  # pragma: no cover
        pass
