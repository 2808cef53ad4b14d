"""Start and stop the distributed world and megatron-core's model-parallel state.

Three launch modes are recognised from the environment, in this order:

* ``torchrun`` (or any launcher that sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``);
* SLURM ``srun`` (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``; the master is the first host of
  ``SLURM_NODELIST`` unless ``MASTER_ADDR`` is set, the port ``MASTER_PORT`` or one derived from the job id);
* a single plain process with none of these (a free localhost port is picked).

On GPUs each rank binds ``cuda:LOCAL_RANK`` and uses NCCL; without a GPU, gloo is used and the
megatron-core CPU compatibility layer (:mod:`nemo_minitron.cpu_compat`) is activated.
"""

from __future__ import annotations

import os
import random
import re
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist

from nemo_minitron import cpu_allocator, cpu_compat
from nemo_minitron.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, as read from the launcher's environment."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str
    """'torchrun', 'slurm' or 'single'."""


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _split_top_level(nodelist: str) -> list[str]:
    """Split a SLURM host list at the commas that are not inside ``[...]``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"cannot parse SLURM node list {nodelist!r}: unbalanced ']'")
        elif ch == "," and depth == 0:
            parts.append(nodelist[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}: unbalanced '['")
    parts.append(nodelist[start:])
    return [p.strip() for p in parts if p.strip()]


def _bracket_values(body: str, nodelist: str) -> list[str]:
    """Values of one ``[...]`` group such as ``003-005,007`` (zero padding of the range start is kept)."""
    values = []
    for item in body.split(","):
        item = item.strip()
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"cannot parse SLURM node list {nodelist!r}: bad range {item!r}")
        if not sep:
            values.append(lo)
            continue
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        values.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return values


def expand_slurm_hostlist(nodelist: str) -> list[str]:
    """All host names of a SLURM node list, in SLURM's order.

    Handles several entries (``gpu[1-2],cpu01``), several bracket groups in one entry
    (``rack[1-2]-node[01-04]``: the last group varies fastest), and text after a group (``node[01-02]-ib``).
    """
    hosts: list[str] = []
    for entry in _split_top_level(nodelist.strip()):
        pieces = re.split(r"(\[[^\]]*\])", entry)
        combos = [""]
        for piece in pieces:
            if piece.startswith("["):
                combos = [c + v for c in combos for v in _bracket_values(piece[1:-1], nodelist)]
            else:
                combos = [c + piece for c in combos]
        hosts.extend(combos)
    if not hosts:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}: no hosts")
    return hosts


def first_slurm_host(nodelist: str) -> str:
    """First host name of a SLURM node list such as ``gpu[003-005,007],cpu01`` (→ ``gpu003``)."""
    first_entry = _split_top_level(nodelist.strip())[:1]
    if not first_entry:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}: no hosts")
    # only the first value of each group matters: avoid expanding a 1000-node range
    entry = re.sub(r"\[([^\]]*)\]", lambda m: "[" + m.group(1).split(",")[0].split("-")[0] + "]", first_entry[0])
    return expand_slurm_hostlist(entry)[0]


def detect_dist_env(environ: Optional[Mapping[str, str]] = None) -> DistEnv:
    """Read rank, world size, local rank and rendezvous address from torchrun, SLURM or nothing."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", "29500")),
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        addr = env.get("MASTER_ADDR") or (first_slurm_host(nodelist) if nodelist else "127.0.0.1")
        job = int(env.get("SLURM_JOB_ID", "0") or 0)
        port = int(env.get("MASTER_PORT") or 20000 + job % 20000)
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            master_addr=addr,
            master_port=port,
            launcher="slurm",
        )
    return DistEnv(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT") or 0) or free_port(), "single")


def seed_everything(seed: int, tp_rank: int = 0) -> None:
    """Seed Python, NumPy and torch, and megatron-core's model-parallel RNG tracker."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        model_parallel_cuda_manual_seed(seed)
    else:
        # No CUDA RNG: a no-op tracker. Dropout-free training and eval lose nothing with it.
        model_parallel_cuda_manual_seed(seed, inference_rng_tracker=True, force_reset_rng=True)


@dataclass(frozen=True)
class ParallelContext:
    """Coordinates of this rank in the TP × PP × DP grid, plus its process groups.

    Pass it explicitly to functions that communicate instead of reading megatron's globals.
    """

    rank: int
    world_size: int
    local_rank: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    device: torch.device
    tp_group: object
    pp_group: object
    dp_group: object

    @property
    def is_first_stage(self) -> bool:
        """True on the pipeline stage that holds the embedding."""
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        """True on the pipeline stage that holds the output layer."""
        return self.pp_rank == self.pp_size - 1

    @property
    def on_gpu(self) -> bool:
        """True when running on CUDA."""
        return self.device.type == "cuda"


def init_distributed(timeout_minutes: int = 30, backend: Optional[str] = None) -> DistEnv:
    """Create the default process group (idempotent) and bind this rank's device."""
    env = detect_dist_env()
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    else:
        cpu_compat.activate()
        cpu_allocator.tune()
        os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    if dist.is_initialized():
        return env
    backend = backend or ("nccl" if on_gpu else "gloo")
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(minutes=timeout_minutes),
    )
    log.info("distributed: %s launch, world size %d, backend %s", env.launcher, env.world_size, backend)
    return env


def init_model_parallel(tp: int = 1, pp: int = 1, seed: int = 1234) -> ParallelContext:
    """Initialise the world if needed, then megatron-core model parallelism with ``tp`` × ``pp``.

    Re-initialising with another layout in the same process is allowed (the old groups are destroyed
    first), which lets one multi-process launch check several layouts.
    """
    from megatron.core import parallel_state as ps

    env = init_distributed()
    world = dist.get_world_size()
    if world % (tp * pp):
        raise ValueError(
            f"world size {world} is not divisible by tensor_model_parallel_size={tp} × "
            f"pipeline_model_parallel_size={pp}"
        )
    same = ps.model_parallel_is_initialized() and (
        ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()) == (tp, pp)
    if not same:
        # megatron's destroy_model_parallel only forgets its groups: each re-initialisation creates ~20 new
        # process groups (with gloo, two threads each), so the same layout keeps the groups it has.
        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    ctx = ParallelContext(
        rank=dist.get_rank(),
        world_size=world,
        local_rank=env.local_rank,
        tp_rank=ps.get_tensor_model_parallel_rank(),
        tp_size=tp,
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        pp_size=pp,
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
        device=torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"),
        tp_group=ps.get_tensor_model_parallel_group(),
        pp_group=ps.get_pipeline_model_parallel_group(),
        dp_group=ps.get_data_parallel_group(),
    )
    seed_everything(seed, ctx.tp_rank)
    return ctx


def shutdown() -> None:
    """Destroy megatron's model-parallel groups and the default process group (idempotent)."""
    try:
        from megatron.core import parallel_state as ps

        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
    except ImportError:  # pragma: no cover
        pass
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
