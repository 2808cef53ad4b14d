"""Typed configuration dataclasses and their Hydra ConfigStore registration."""

from nemo_minitron.config.model import ConfigError, ModelConfig

__all__ = ["ConfigError", "ModelConfig"]
