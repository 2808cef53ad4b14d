"""Real process starts: two processes that see only SLURM variables form a world (as under srun)."""

import json
import os
import subprocess
import sys

import pytest

from nemo_minitron.runtime import free_port
from tests.launch import REPO

WORKER = REPO / "tests" / "workers" / "runtime_world.py"


@pytest.mark.multiproc
@pytest.mark.timeout(180)
def test_slurm_style_launch(tmp_path):
    port = free_port()
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    base.update({"SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": "42",
                 "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
                 "NEMO_MINITRON_TEST_RESULTS": str(tmp_path), "PYTHONPATH": str(REPO)})
    procs = []
    for rank in range(2):
        # only SLURM variables: the runtime must derive rank, world and local rank from them
        env = base | {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
        procs.append(subprocess.Popen([sys.executable, str(WORKER)], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=150)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(outs)[-5000:]
    # the worker writes rank<RANK>.jsonl; RANK is unset, so both append to rank0.jsonl
    results = [json.loads(line) for f in tmp_path.glob("rank*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(r["rank"] for r in results) == [0, 1]
    for r in results:
        assert r["launcher"] == "slurm" and r["world"] == 2 and r["sum"] == 3.0
        assert r["local_rank"] == r["rank"] and r["tp_rank"] == r["rank"]
