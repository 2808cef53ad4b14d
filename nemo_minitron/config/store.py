"""Register every typed config schema in Hydra's ConfigStore.

Each YAML entry point under ``conf/`` names its schema first in ``defaults`` (e.g.
``- model_info_schema``), so values coming from YAML and the command line are type-checked and
unknown keys are rejected. Config modules expose ``register(cs)``; list new ones in ``_MODULES``.
"""

from __future__ import annotations

import importlib

from hydra.core.config_store import ConfigStore

_MODULES = (
    "nemo_minitron.config.schemas",
    "nemo_minitron.config.prune",
    "nemo_minitron.config.train",
    "nemo_minitron.config.data",
    "nemo_minitron.config.interop",
    "nemo_minitron.plan.planner",
)

_done = False


def register_configs() -> ConfigStore:
    """Register all schemas (idempotent) and return the ConfigStore."""
    global _done
    cs = ConfigStore.instance()
    if not _done:
        for name in _MODULES:
            importlib.import_module(name).register(cs)
        _done = True
    return cs
