"""NeMo plugin: nemo_minitron's pruning and distillation recipes inside NeMo / NeMo-Run.

Nothing here is imported by the rest of the library, and importing this package does not import NeMo:

* :mod:`.cli` – the ``nemo minitron prune|distill`` commands (registered through the ``nemo_run.cli``
  entry-point group in ``pyproject.toml``; needs ``nemo_run``);
* :mod:`.connectors` – the ``minitron://`` importer / exporter of ``llm.import_ckpt`` / ``llm.export_ckpt``
  (imports NeMo; registered when imported, by :func:`register`, or by the ``nemo`` command);
* :mod:`.factories` – NeMo-Run recipe factories for ``nemo llm prune|distill --factory minitron_...``;
* :func:`compose` – our Hydra recipes as typed configs, for Python callers (a NeMo recipe step).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Optional, Sequence


def nemo_available() -> bool:
    """True when NeMo's LLM collection and NeMo-Run can be imported (without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("nemo", "nemo_run"))


def register() -> None:
    """Register our ``minitron://`` importer/exporter and recipe factories with NeMo (imports NeMo; idempotent)."""
    from nemo_minitron.nemo_plugin import connectors, factories  # noqa: F401 (registration happens on import)


def compose(config_name: str, overrides: Optional[Sequence[str]] = None) -> Any:
    """Our Hydra recipe ``config_name`` with ``overrides``, as the typed config object the recipe runs.

    ``config_name`` is ``megatron_prune``, ``megatron_distill``, ...; unknown keys and bad values raise as on
    the command line.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from nemo_minitron.config.store import register_configs
    from nemo_minitron.paths import conf_dir

    register_configs()
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        return OmegaConf.to_object(hydra_compose(config_name=config_name, overrides=list(overrides or ())))


def prune(restore_from_path: str, save_path: str, overrides: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run Minitron pruning (``megatron_prune`` recipe) on ``restore_from_path``, save to ``save_path``; the report."""
    from nemo_minitron.prune.pipeline import run_prune

    job = compose("megatron_prune", [f"model.restore_from_path={restore_from_path}",
                                     f"export.save_path={save_path}", *(overrides or ())])
    return run_prune(job)


def distill(restore_from_path: str, teacher_path: str, save_path: str, run_dir: str,
            overrides: Optional[Sequence[str]] = None):
    """Run knowledge distillation (``megatron_distill`` recipe).

    The student at ``restore_from_path`` learns from ``teacher_path``; the student is saved to ``save_path``, the training state to ``run_dir``.
    """
    from nemo_minitron.train.recipe import run

    job = compose("megatron_distill", [f"model.restore_from_path={restore_from_path}",
                                       f"model.kd_teacher_restore_from_path={teacher_path}",
                                       f"export.save_path={save_path}", *(overrides or ())])
    return run(job, run_dir)
