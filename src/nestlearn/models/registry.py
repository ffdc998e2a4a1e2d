"""Registry of block families and named presets.

A family is a function ``(cfg, layer_index) -> Block``; registering one makes it buildable
from configs, the CLI (``nestlearn list``), the trainer and the benchmark harness.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

from nestlearn.models.config import ModelConfig
from nestlearn.models.skeleton import Block, LanguageModel
from nestlearn.utils.config import check_keys


@dataclass(frozen=True)
class Family:
    name: str
    build_block: Callable[[ModelConfig, int], Block]
    description: str
    supports_decode: bool = True
    """Whether the family can decode token by token with a state (generation, decode bench)."""
    supports_naive: bool = False
    """Whether ``model.mixer.naive=true`` runs the mixer's per-token reference op (``nestlearn
    bench --naive`` sets it only for such families)."""


FAMILIES: dict[str, Family] = {}
PRESETS: dict[str, dict[str, Any]] = {}
PRESET_NOTES: dict[str, str] = {}


def register_family(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def register_preset(name: str, note: str = "", **cfg: Any) -> None:
    if name in PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    ModelConfig(**cfg)  # validate at import time: a broken preset fails loudly
    PRESETS[name] = cfg
    PRESET_NOTES[name] = note


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` of preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    cfg = copy.deepcopy(PRESETS[name])
    check_keys(overrides, [f.name for f in fields(ModelConfig)], what="model keys")
    cfg.update(overrides)
    return ModelConfig(**cfg)


def build_model(
    cfg: ModelConfig | str,
    *,
    device: torch.device | str | None = None,
    seed: int | None = 0,
    meta: bool = False,
) -> LanguageModel:
    """Build and initialise a model from a config or a preset name.

    The model is built on the meta device, materialised on ``device`` (CPU by default)
    and set by :meth:`LanguageModel.init_weights`. ``meta=True`` stops before
    materialising (for FSDP wrapping or shape-only inspection).
    """
    if isinstance(cfg, str):
        cfg = preset_config(cfg)
    if cfg.family not in FAMILIES:
        raise ValueError(
            f"unknown model family {cfg.family!r}; choose one of: {', '.join(sorted(FAMILIES))}"
        )
    fam = FAMILIES[cfg.family]
    with torch.device("meta"):
        model = LanguageModel(cfg, [fam.build_block(cfg, i) for i in range(cfg.n_layers)])
    if meta:
        return model
    model = model.to_empty(device=device or "cpu")
    model.init_weights(seed=seed)
    return model
