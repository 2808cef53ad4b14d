"""Register every typed config schema in Hydra's ConfigStore; turn a composed config into its schema object.

Each YAML entry point under ``conf/`` names its schema first in ``defaults`` (e.g.
``- model_info_schema``), so values coming from YAML and the command line are type-checked. Config
modules expose ``register(cs)``; list new ones in ``_MODULES``.

Hydra's ``+key=value`` adds a key even to a typed node, so entry points convert the composed config
with :func:`to_object`, which first checks every key against its schema (:mod:`nemo_minitron.config.keys`).
"""

from __future__ import annotations

import importlib
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from nemo_minitron.config.keys import check_keys

_MODULES = (
    "nemo_minitron.config.schemas",
    "nemo_minitron.config.prune",
    "nemo_minitron.config.train",
    "nemo_minitron.config.data",
    "nemo_minitron.config.interop",
    "nemo_minitron.eval.config",
    "nemo_minitron.recipe.config",
    "nemo_minitron.plan.planner",
)

#: Hydra settings shared by every entry point (``- nemo_minitron_hydra`` in a primary config's defaults):
#: run in the current directory without creating ``outputs/DATE/TIME`` or ``.hydra/`` there, write no
#: ``<job>.log`` file (library logs go to stderr), and ``--help`` lists the schema's keys with their docs.
HYDRA_SETTINGS = {
    "defaults": [{"override hydra/job_logging": "none"}, {"override hydra/hydra_logging": "none"}],
    "hydra": {
        "run": {"dir": "."},
        "sweep": {"dir": ".", "subdir": "."},
        "output_subdir": None,
        "job": {"chdir": False},
        "help": {"template": "${nemo_minitron_help:${hydra.job.config_name}}"},
    },
}

_done = False


def register_configs() -> ConfigStore:
    """Register all schemas, the shared Hydra settings and the ``--help`` resolver (idempotent)."""
    global _done
    cs = ConfigStore.instance()
    if not _done:
        for name in _MODULES:
            importlib.import_module(name).register(cs)
        cs.store(name="nemo_minitron_hydra", node=HYDRA_SETTINGS, package="_global_")
        if not OmegaConf.has_resolver("nemo_minitron_help"):
            OmegaConf.register_new_resolver("nemo_minitron_help", _help_text)
        _done = True
    return cs


def to_object(cfg: Any) -> Any:
    """The schema object of a composed config, after checking that every key belongs to its schema.

    Raises :class:`~nemo_minitron.config.model.ConfigError` naming unknown keys (with the nearest valid
    key as a suggestion), also for keys added with Hydra's ``+key=value``.
    """
    check_keys(cfg)
    return OmegaConf.to_object(cfg)


def _help_text(config_name: str, *, _root_: Any = None) -> str:
    from nemo_minitron.config.help import help_text

    return help_text(config_name, _root_)
