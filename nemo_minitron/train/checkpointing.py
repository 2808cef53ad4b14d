"""Train-state checkpoints under a run directory: save atomically, keep the last k, resume the latest.

Layout (``RUN/checkpoints/step_0000100/``)::

    model/               a plain nemo_minitron checkpoint of the student (loads with load_checkpoint;
                         the teacher is never saved)
    optimizer/           megatron dist checkpoint of optimizer.sharded_state_dict(...) and of the
                         loss object's own parameters (e.g. a KD projection), resharded like the rest
    rank_00000.pt ...    per-rank RNG states
    trainer_state.json   step, consumed samples, Adam step, parallel layout
    COMPLETE             written last

Everything is written into ``RUN/checkpoints/.step_0000100.incomplete/`` and renamed into place by
rank 0 after every rank finished, so a crash (or a kill) never leaves something that looks like a
checkpoint. Older checkpoints beyond ``keep_last_k`` are deleted only after the new one is complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from nemo_minitron.atomic import barrier, broadcast_from_rank0, replace_dir
from nemo_minitron.checkpoint import load_checkpoint, save_checkpoint
from nemo_minitron.config.model import ModelConfig
from nemo_minitron.logging import get_logger
from nemo_minitron.train import optim_compat

log = get_logger(__name__)

STATE_FILE = "trainer_state.json"
COMPLETE = "COMPLETE"
_STEP_RE = re.compile(r"^step_(\d+)$")
#: DistributedOptimizer state sharding written by this module: parallel save/load, reshards over DP.
DISTOPT_SHARDING = "dp_reshardable"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    """``RUN/checkpoints``."""
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete train-state checkpoints in ``run_dir``, oldest first, as ``(step, path)``."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and (p / COMPLETE).is_file() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Optional[Path]:
    """The newest complete train-state checkpoint of ``run_dir`` (rank 0 decides), or None."""
    found = list_checkpoints(run_dir) if _rank() == 0 else None
    found = broadcast_from_rank0(found)
    return found[-1][1] if found else None


def read_trainer_state(path: str | os.PathLike) -> dict:
    """The ``trainer_state.json`` of a train-state checkpoint."""
    return json.loads((Path(path) / STATE_FILE).read_text())


#: Settings that may change when a run resumes (length, logging, outputs, parallel layout, loaders).
RESUMABLE_PREFIXES = ("name", "trainer.", "exp_manager.", "export.", "model.tensor_model_parallel_size",
                      "model.pipeline_model_parallel_size", "model.micro_batch_size", "model.data.num_workers",
                      "model.data.index_mapping_dir", "data.num_workers", "data.index_cache_dir",
                      "model.precision")


def _flatten(obj, prefix: str = "") -> dict:
    if dataclasses.is_dataclass(obj):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        out: dict = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, (list, tuple)):
        obj = [list(x) if isinstance(x, (list, tuple)) else x for x in obj]
    elif not isinstance(obj, (str, int, float, bool, type(None))):
        obj = str(obj)
    return {prefix[:-1]: obj}


def run_identity(cfg) -> dict:
    """The flattened settings of a training config that must not change on resume (JSON-serialisable).

    Everything except :data:`RESUMABLE_PREFIXES`; ``kd.*`` only counts when distilling.
    """
    flat = _flatten(cfg)
    keep = {}
    for k, v in flat.items():
        if any(k == p or k.startswith(p) for p in RESUMABLE_PREFIXES):
            continue
        if k.startswith("kd.") and flat.get("mode") != "distill":
            continue
        keep[k] = v
    return keep


def check_same_run(saved: Optional[dict], now: dict, path) -> None:
    """Refuse to resume ``path`` when its run's settings differ from ``now`` (naming the keys)."""
    if saved is None:  # checkpoints written before the settings were recorded
        return
    keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if not keys:
        return
    from nemo_minitron.config.model import ConfigError

    shown = "; ".join(f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in keys[:8])
    more = f" (and {len(keys) - 8} more)" if len(keys) > 8 else ""
    raise ConfigError(f"{path} belongs to a run with different settings: {shown}{more}. Use another run directory "
                      "(exp_manager.explicit_log_dir=...) or set those keys back to resume it")


def _rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    # numpy's state as tensors/ints so the file loads with torch.load(weights_only=True)
    state = {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     cached], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
        try:
            from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

            state["tracker"] = get_cuda_rng_tracker().get_states()
        except Exception:  # pragma: no cover - tracker API differences
            pass
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
        if "tracker" in state:
            from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

            get_cuda_rng_tracker().set_states(state["tracker"])


#: Key of the loss object's parameters inside the ``optimizer/`` dist checkpoint.
LOSS_STATE = "training_loss"


def _optimizer_sharded_state(optimizer, module: torch.nn.Module, is_loading: bool) -> dict:
    """The optimizer's sharded state over ``module`` (the trained chunk), plus the loss's parameters if it has them."""
    from nemo_minitron.train.chunk import TrainedChunk, loss_sharded_state

    model_sd = module.sharded_state_dict(prefix="")
    state = optim_compat.distopt_sharded_state_dict(optimizer, model_sd, is_loading=is_loading,
                                                    metadata={"distrib_optim_sharding_type": DISTOPT_SHARDING})
    if isinstance(module, TrainedChunk):
        state[LOSS_STATE] = loss_sharded_state(module.loss)
    return state


def _trained_and_student(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(trained chunk, student GPT stage)`` of a DDP-wrapped, chunk or bare ``model``."""
    from nemo_minitron.train.chunk import TrainedChunk

    trained = getattr(model, "module", model) if not isinstance(model, TrainedChunk) else model
    student = trained.module if isinstance(trained, TrainedChunk) else trained
    return trained, student


def save_train_state(
    run_dir: str | os.PathLike,
    step: int,
    student: torch.nn.Module,
    student_cfg: ModelConfig,
    optimizer,
    trainer_state: dict,
    keep_last_k: int = 2,
    tokenizer_dir: Optional[str | os.PathLike] = None,
    extra_state: Optional[dict] = None,
) -> Path:
    """Save a train-state checkpoint for ``step``. Collective.

    ``student`` is the trained model: megatron DDP around a :class:`~nemo_minitron.train.chunk.TrainedChunk`
    (student + loss parameters), the chunk, or a bare student. ``trainer_state`` is JSON-serialisable
    (step, consumed samples...); ``extra_state`` is this rank's additional torch state, saved per rank.
    """
    from megatron.core import dist_checkpointing

    trained, module = _trained_and_student(student)
    root = checkpoint_root(run_dir)
    final = root / f"step_{step:07d}"
    tmp = root / f".step_{step:07d}.incomplete"
    if _rank() == 0:
        if root.is_dir():  # leftovers of saves that were killed half-way
            for stale in root.glob(".step_*.incomplete"):
                shutil.rmtree(stale, ignore_errors=True)
        (tmp / "optimizer").mkdir(parents=True)
    barrier()
    t0 = time.time()
    save_checkpoint(module, student_cfg, tmp / "model", tokenizer_dir=tokenizer_dir,
                    extra_metadata={"train_step": step})
    dist_checkpointing.save(_optimizer_sharded_state(optimizer, trained, is_loading=False), str(tmp / "optimizer"))
    torch.save({"rng": _rng_state(), "extra": extra_state or {}}, tmp / f"rank_{_rank():05d}.pt")
    barrier()
    if _rank() == 0:
        state = dict(trainer_state, step=step, adam_step=optim_compat.adam_step(optimizer),
                     world_size=dist.get_world_size() if dist.is_initialized() else 1, saved_unix=time.time())
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
        (tmp / COMPLETE).write_text("ok\n")
        replace_dir(tmp, final)
        for _, old in list_checkpoints(run_dir)[:-keep_last_k]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("saved train state %s (%.1f s)", final, time.time() - t0)
    barrier()
    return final


def load_train_state(
    path: str | os.PathLike,
    student: torch.nn.Module,
    student_cfg: ModelConfig,
    optimizer,
) -> tuple[dict, dict]:
    """Restore student weights, the loss's parameters, optimizer and this rank's RNG from ``path``. Collective.

    Returns ``(trainer_state, extra_state)``. The parallel layout may differ from the saved one in
    the data-parallel size only when the distributed optimizer is used; the model reshards freely.
    """
    from megatron.core import dist_checkpointing

    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    trained, module = _trained_and_student(student)
    load_checkpoint(module, student_cfg, path / "model")
    optim_compat.prime_optimizer_state(optimizer)
    with torch.no_grad():  # dp_reshardable load must not record autograd history
        loaded = dist_checkpointing.load(_optimizer_sharded_state(optimizer, trained, is_loading=True),
                                         str(path / "optimizer"))
        loss_state = loaded.pop(LOSS_STATE, None)
        optimizer.load_state_dict(loaded)
        if loss_state:
            from nemo_minitron.train.chunk import LOSS_PREFIX

            trained.loss.load_state_dict({k[len(LOSS_PREFIX):]: v for k, v in loss_state.items()})
    if state.get("adam_step") is not None:
        optim_compat.set_adam_step(optimizer, int(state["adam_step"]))
    rank_file = path / f"rank_{_rank():05d}.pt"
    extra: dict = {}
    if rank_file.is_file() and state.get("world_size") == (dist.get_world_size() if dist.is_initialized() else 1):
        blob = torch.load(rank_file, weights_only=True)
        _set_rng_state(blob["rng"])
        extra = blob.get("extra", {})
    else:
        log.warning("%s: world size changed since the save; RNG states are not restored", path)
    log.info("resumed from %s (step %d, %d samples consumed)", path, state["step"], state.get("consumed_samples", 0))
    return state, extra
