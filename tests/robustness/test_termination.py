"""cli.run's exit codes after signals (one convention: 143 SIGTERM, 130 Ctrl-C), also when Python lost the exception."""

import os
import signal

import pytest

from nemo_minitron import cli, termination
from nemo_minitron.train import signals


def _exit_code(main, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.run(main, [])
    return exc.value.code, capsys.readouterr().err


def test_one_exit_code_convention():
    assert cli.EXIT_SIGTERM == termination.PREEMPTED_EXIT_CODE == signals.PREEMPTED_EXIT_CODE == 143
    assert termination.INTERRUPTED_EXIT_CODE == signals.INTERRUPTED_EXIT_CODE == 130


def test_ctrl_c_outside_training_exits_130_without_a_traceback(capsys, monkeypatch):
    monkeypatch.delenv(cli.VERBOSE_ENV, raising=False)

    def main():
        raise KeyboardInterrupt

    code, err = _exit_code(main, capsys)
    assert code == 130 and "Traceback" not in err and err.strip() == "interrupted"


def test_sigterm_whose_exception_was_lost_still_exits_143(capsys):
    """The handler ran where its exception is discarded (an os.fork hook; here a deferred block): not exit 0."""
    def main():
        with termination.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10000):  # the Python-level handler runs in this loop and only records the request
                pass
        assert termination.requested() == signal.SIGTERM

    code, err = _exit_code(main, capsys)
    assert code == 143 and "terminated by SIGTERM" in err and "Traceback" not in err
    assert cli.run(lambda: None, []) == 0  # the next command starts clean
    assert signal.getsignal(signal.SIGTERM) is not termination.on_sigterm  # the previous handler is back


def test_sigterm_wrapped_into_another_error_exits_143(capsys):
    """A library that catches BaseException (torch DCP wraps it) must not turn a SIGTERM into exit 1 or 2."""
    def main():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10000):
                pass
        except BaseException as exc:
            raise RuntimeError(f"wrapped: {exc!r}") from None

    code, err = _exit_code(main, capsys)
    assert code == 143 and "Traceback" not in err


def test_atomic_dir_publishes_nothing_after_a_lost_sigterm(tmp_path):
    from nemo_minitron.atomic import atomic_dir

    previous = signal.signal(signal.SIGTERM, termination.on_sigterm)
    try:
        with pytest.raises(termination.Terminated):
            with atomic_dir(tmp_path / "out") as tmp:
                (tmp / "f").write_text("new")
                with termination.deferred():
                    os.kill(os.getpid(), signal.SIGTERM)
                    for _ in range(10000):
                        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        termination.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
