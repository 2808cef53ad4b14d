"""Schemas shared by several entry points (the output block) and of ``examples/model_info.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from nemo_minitron.config.model import ModelConfig


@dataclass
class ExportConfig:
    """Where a recipe writes its resulting checkpoint (``export.*`` of prune, distill and finetune)."""

    save_path: Optional[str] = None
    """Output checkpoint, written atomically; required by prune, optional for training (null: no export).
    A path ending in ``.nemo`` writes a NeMo 1 archive (as the NeMo pruning tutorial does)."""

    format: str = "auto"
    """auto (nemo for a save_path ending in .nemo, else megatron), megatron (a nemo_minitron checkpoint), nemo
    (NeMo 1: a .nemo archive, or an extracted directory), nemo2 (a NeMo 2 checkpoint directory) or hf."""

    overwrite: bool = False
    """Replace an existing save_path; without it an existing output is refused."""


@dataclass
class ModelInfoConfig:
    """``examples/model_info.py``: print an architecture and its parameter counts without building it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture; pick a preset with ``model=<name>`` (files in conf/model/)."""

    output: str = "text"
    """text (human-readable table) or json (one JSON object with num_parameters etc.)."""


def register(cs) -> None:
    """Register the schemas of this module."""
    cs.store(name="model_info_schema", node=ModelInfoConfig)
    cs.store(group="model", name="schema", node=ModelConfig)
