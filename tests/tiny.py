"""The tiny Llama-style test model, defined once: ``conf/model/tiny.yaml`` (the ``model=tiny`` preset).

4 layers, hidden 64, MLP 128, 8 query heads in 4 KV groups, vocab 256, 256 positions; TP and PP of 1, 2
or 4 divide it. Tests and multi-process workers take it from :func:`tiny` (``tiny(num_layers=2)`` for a
variant); pytest tests may use the ``tiny_cfg`` fixture of ``conftest.py``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from nemo_minitron.config.model import ModelConfig

TINY_YAML = Path(__file__).resolve().parents[1] / "conf" / "model" / "tiny.yaml"


@lru_cache(maxsize=1)
def _preset() -> ModelConfig:
    import yaml

    return ModelConfig.from_dict(yaml.safe_load(TINY_YAML.read_text()))


def tiny(**changes: Any) -> ModelConfig:
    """The tiny test model with ``changes`` applied (a fresh object each call)."""
    return _preset().replace(**changes)
