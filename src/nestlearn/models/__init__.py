"""Model skeleton, configs, families and presets."""

from nestlearn.models import families as _families  # noqa: F401  (registers families)
from nestlearn.models.config import ModelConfig
from nestlearn.models.freeze import frozen_memory, set_memory_frozen
from nestlearn.models.ntp import NTPState, ntp_forward, uses_ntp
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
from nestlearn.models.state_io import StateFileError, load_state, save_state

__all__ = [
    "FAMILIES",
    "PRESETS",
    "PRESET_NOTES",
    "Block",
    "Family",
    "LanguageModel",
    "ModelConfig",
    "ModelState",
    "NTPState",
    "StateFileError",
    "build_model",
    "frozen_memory",
    "load_state",
    "ntp_forward",
    "preset_config",
    "register_family",
    "register_preset",
    "save_state",
    "set_memory_frozen",
    "uses_ntp",
]
