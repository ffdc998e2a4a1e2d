"""Model skeleton, configs, families and presets."""

from nestlearn.models import families as _families  # noqa: F401  (registers families)
from nestlearn.models.config import ModelConfig
from nestlearn.models.registry import (
    FAMILIES,
    PRESET_NOTES,
    PRESETS,
    Family,
    build_model,
    preset_config,
    register_family,
    register_preset,
)
from nestlearn.models.skeleton import Block, LanguageModel, ModelState

__all__ = [
    "FAMILIES",
    "PRESETS",
    "PRESET_NOTES",
    "Block",
    "Family",
    "LanguageModel",
    "ModelConfig",
    "ModelState",
    "build_model",
    "preset_config",
    "register_family",
    "register_preset",
]
