"""Run a worker script under torchrun on localhost with a free port and a hard timeout.

Multi-process tests start one torchrun job per world size and let the worker run several checks
(a torchrun start costs 7-16 s here); workers record results with :func:`report`, which the
parent collects from one file per rank.

No job outlives its test: torchrun starts in a session of its own, every worker starts through this
file (``python tests/launch.py SCRIPT ARGS``), which gives it a parent-death signal before running
the script (torchrun puts each worker in yet another session, out of reach of a process-group
kill), and on a timeout :func:`kill_job` kills torchrun's process group and every descendant.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nemo_minitron.runtime import free_port

REPO = Path(__file__).resolve().parent.parent


def torchrun_command(script: str | Path, nproc: int, args: list[str] | None = None,
                     env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a torchrun job of ``nproc`` workers booted through this file."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc-per-node={nproc}", "--nnodes=1", f"--master-port={free_port()}",
        "--master-addr=127.0.0.1", "--max-restarts=0",
        str(Path(__file__).resolve()), str(script), *(args or []),
    ]
    full_env = dict(os.environ)
    full_env.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": "",
                     "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")})
    full_env.update(env or {})
    return cmd, full_env


def torchrun(script: str | Path, nproc: int, args: list[str] | None = None, timeout: float = 300,
             env: dict[str, str] | None = None) -> list[dict]:
    """Launch ``script`` with ``nproc`` processes; return every object the ranks passed to :func:`report`.

    Raises AssertionError with the combined output when the job fails or times out (then the whole
    job is killed, :func:`kill_job`).
    """
    cmd, full_env = torchrun_command(script, nproc, args, env)
    with tempfile.TemporaryDirectory(prefix="nm_results_") as results_dir:
        # each rank appends to its own file: ranks share one stdout pipe and their lines interleave
        full_env["NEMO_MINITRON_TEST_RESULTS"] = results_dir
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                                cwd=REPO, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_job(proc)
            stdout, stderr = proc.communicate()
            raise AssertionError(f"torchrun {script} timed out after {timeout}s\n{stdout}\n{stderr}") from None
        except BaseException:  # Ctrl-C, pytest-timeout: take the job along
            kill_job(proc)
            raise
        out = stdout + "\n" + stderr
        if proc.returncode != 0:
            raise AssertionError(f"torchrun {script} exited {proc.returncode}\n{out[-20000:]}")
        results = []
        for path in sorted(Path(results_dir).glob("rank*.jsonl")):
            results.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
        return results


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (read from /proc; empty where there is none)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - out
        out |= frontier
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_job(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGKILL a job started in its own session: its process group and every descendant (workers in other sessions)."""
    victims = descendants(proc.pid)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:  # pragma: no cover - the kernel takes its time
        time.sleep(grace)


def _boot_worker(argv: list[str]) -> None:
    """Worker side: die with torchrun (parent-death signal), then run ``argv[0]`` as ``__main__`` with ``argv[1:]``."""
    from nemo_minitron.cli import die_with_parent

    die_with_parent()
    script = str(Path(argv[0]).resolve())
    sys.argv = [script, *argv[1:]]
    sys.path[0] = str(Path(script).parent)
    runpy.run_path(script, run_name="__main__")


def report(obj: dict) -> None:
    """Worker side: record one result (a JSON-serialisable dict) for the parent test to collect."""
    results_dir = os.environ.get("NEMO_MINITRON_TEST_RESULTS")
    line = json.dumps(obj)
    if results_dir:
        with open(Path(results_dir) / f"rank{os.environ.get('RANK', '0')}.jsonl", "a") as f:
            f.write(line + "\n")
    else:
        print("RESULT " + line, flush=True)


if __name__ == "__main__":
    _boot_worker(sys.argv[1:])
