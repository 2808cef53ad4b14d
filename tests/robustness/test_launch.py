"""tests/launch.py leaves no process behind: parent-death signal for workers, whole-job kill on a timeout."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launch import REPO, descendants, kill_job, torchrun, torchrun_command
from tests.launch import alive as _alive

SLEEPER = REPO / "tests" / "workers" / "sleeper.py"


def _wait_for_pids(directory: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> list[int]:
    end = time.time() + timeout
    while time.time() < end:
        pids = [int(p.stem) for p in directory.glob("*.pid")]
        if len(pids) >= n:
            return pids
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("the workers never started")


def _gone(pids, timeout: float = 20) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_workers_die_with_torchrun(tmp_path):
    """kill -9 of torchrun alone: its workers (each in a session of its own) must not stay behind."""
    cmd, env = torchrun_command(SLEEPER, 2, [str(tmp_path)])
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        pids = _wait_for_pids(tmp_path, 2, proc)
        assert all(_alive(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert _gone(pids), "workers outlived torchrun"
    finally:
        kill_job(proc)


@pytest.mark.slow
def test_timeout_kills_the_whole_job(tmp_path):
    t0 = time.time()
    try:
        torchrun(SLEEPER, 1, [str(tmp_path)], timeout=45)
    except AssertionError as exc:
        assert "timed out" in str(exc)
    else:
        raise AssertionError("a sleeping job finished")
    pids = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert pids, "the worker had not started before the timeout: this run tested nothing"
    assert _gone(pids, timeout=5), "a worker outlived the timed-out job"
    assert time.time() - t0 < 45 + 30


def test_kill_job_reaches_other_sessions(tmp_path):
    script = "import os, subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], " \
             "start_new_session=True); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    end = time.time() + 30
    while not descendants(proc.pid) and time.time() < end:
        time.sleep(0.05)
    kids = descendants(proc.pid)
    assert kids
    kill_job(proc)
    assert _gone(kids | {proc.pid}, timeout=10)
