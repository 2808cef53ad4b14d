"""Run a worker script under torchrun on localhost with a free port and a hard timeout.

Multi-process tests start one torchrun job per world size and let the worker run several checks
(a torchrun start costs 7-16 s here); workers record results with :func:`report`, which the
parent collects from one file per rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from nemo_minitron.runtime import free_port

REPO = Path(__file__).resolve().parent.parent


def torchrun(script: str | Path, nproc: int, args: list[str] | None = None, timeout: float = 300,
             env: dict[str, str] | None = None) -> list[dict]:
    """Launch ``script`` with ``nproc`` processes; return every object the ranks passed to :func:`report`.

    Raises AssertionError with the combined output when the job fails or times out.
    """
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc-per-node={nproc}", "--nnodes=1", f"--master-port={free_port()}",
        "--master-addr=127.0.0.1", "--max-restarts=0",
        str(script), *(args or []),
    ]
    full_env = dict(os.environ)
    full_env.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": "",
                     "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")})
    full_env.update(env or {})
    with tempfile.TemporaryDirectory(prefix="nm_results_") as results_dir:
        # each rank appends to its own file: ranks share one stdout pipe and their lines interleave
        full_env["NEMO_MINITRON_TEST_RESULTS"] = results_dir
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"torchrun {script} timed out after {timeout}s\n{exc.stdout}\n{exc.stderr}") from None
        out = proc.stdout + "\n" + proc.stderr
        if proc.returncode != 0:
            raise AssertionError(f"torchrun {script} exited {proc.returncode}\n{out[-20000:]}")
        results = []
        for path in sorted(Path(results_dir).glob("rank*.jsonl")):
            results.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
        return results


def report(obj: dict) -> None:
    """Worker side: record one result (a JSON-serialisable dict) for the parent test to collect."""
    results_dir = os.environ.get("NEMO_MINITRON_TEST_RESULTS")
    line = json.dumps(obj)
    if results_dir:
        with open(Path(results_dir) / f"rank{os.environ.get('RANK', '0')}.jsonl", "a") as f:
            f.write(line + "\n")
    else:
        print("RESULT " + line, flush=True)
