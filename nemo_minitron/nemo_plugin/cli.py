"""``nemo minitron prune|distill``: NeMo-Run entry points.

Loaded by the ``nemo`` command through the ``nemo_run.cli`` entry-point group; this module needs ``nemo_run``.

    nemo minitron prune restore_from_path=CKPT save_path=OUT 'overrides=["prune.ffn_hidden_size=768"]' -y
    nemo minitron distill restore_from_path=STUDENT teacher_path=TEACHER save_path=OUT run_dir=RUN -y

``overrides`` are the recipe's Hydra overrides (the keys of ``conf/megatron_prune.yaml`` and
``conf/megatron_distill.yaml``).

When NeMo is installed, loading this module also registers the ``minitron://`` importer/exporter
(:mod:`.connectors`) and the ``--factory minitron`` recipes of ``nemo llm prune|distill`` (:mod:`.factories`),
so that every ``nemo`` command (which loads all ``nemo_run.cli`` entry points) has them.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

import nemo_run as run

from nemo_minitron import nemo_plugin

NAMESPACE = "minitron"
if importlib.util.find_spec("nemo") is not None:
    nemo_plugin.register()


@run.cli.entrypoint(namespace=NAMESPACE, help="Minitron width/depth pruning of a checkpoint (megatron_prune recipe)")
def prune(restore_from_path: str, save_path: str, overrides: Optional[list[str]] = None) -> None:
    """Prune ``restore_from_path`` into ``save_path``; ``overrides`` as for examples/megatron_prune.py."""
    nemo_plugin.prune(restore_from_path, save_path, overrides)


@run.cli.entrypoint(namespace=NAMESPACE, help="Knowledge distillation of a pruned student (megatron_distill recipe)")
def distill(restore_from_path: str, teacher_path: str, save_path: str, run_dir: str,
            overrides: Optional[list[str]] = None) -> None:
    """Distil the student ``restore_from_path`` from ``teacher_path``; ``overrides`` as for megatron_distill.py."""
    nemo_plugin.distill(restore_from_path, teacher_path, save_path, run_dir, overrides)
