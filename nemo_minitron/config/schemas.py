"""Schemas of the foundation's entry points (model_info)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nemo_minitron.config.model import ModelConfig


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
