"""One Hugging Face model type per registered nestlearn family: ``nestlearn-<family>``.

``AutoConfig.register`` requires the config class's ``model_type`` to equal the registered
name, and ``AutoModelForCausalLM.register`` maps one config class to one model class, so each
family gets a thin config subclass and model subclass, made here from the registry. A family
registered later (a new file under ``nestlearn/models/families``) is picked up by the next
:func:`register_families` call; no per-family code lives here.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM

from nestlearn.hf.configuration import MODEL_TYPE_PREFIX, NestlearnConfig
from nestlearn.hf.modeling import NestlearnForCausalLM
from nestlearn.models.config import ModelConfig
from nestlearn.models.registry import FAMILIES

logger = logging.getLogger(__name__)

_CONFIGS: dict[str, type[NestlearnConfig]] = {}
_MODELS: dict[str, type[NestlearnForCausalLM]] = {}


def _camel(family: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[^0-9A-Za-z]+", family) if p)


def _config_init(self: NestlearnConfig, nestlearn: dict[str, Any] | None = None, **kwargs: Any):
    NestlearnConfig.__init__(self, nestlearn, **kwargs)


def register_families() -> list[str]:
    """Register every family in :data:`nestlearn.models.FAMILIES` not registered yet.

    Returns the model types registered by this call. Idempotent.
    """
    new = []
    for family in sorted(FAMILIES):
        if family in _CONFIGS:
            continue
        model_type = MODEL_TYPE_PREFIX + family
        name = "Nestlearn" + _camel(family)
        # transformers (5.x) turns config subclasses into dataclasses with a generated
        # __init__ unless the class defines its own, so each subclass names ours explicitly.
        cfg_cls = type(
            name + "Config",
            (NestlearnConfig,),
            {"model_type": model_type, "__init__": _config_init, "__module__": __name__},
        )
        model_cls = type(
            name + "ForCausalLM",
            (NestlearnForCausalLM,),
            {"config_class": cfg_cls, "__module__": __name__},
        )
        AutoConfig.register(model_type, cfg_cls, exist_ok=True)
        AutoModelForCausalLM.register(cfg_cls, model_cls, exist_ok=True)
        _CONFIGS[family], _MODELS[family] = cfg_cls, model_cls
        globals()[cfg_cls.__name__] = cfg_cls
        globals()[model_cls.__name__] = model_cls
        new.append(model_type)
    if new:
        logger.debug("registered with transformers: %s", ", ".join(new))
    return new


def _lookup(table: dict[str, type], family: str) -> type:
    if family not in table:
        register_families()
    if family not in table:
        raise ValueError(
            f"unknown nestlearn family {family!r}; registered: {', '.join(sorted(FAMILIES))}"
        )
    return table[family]


def config_class_for(family: str) -> type[NestlearnConfig]:
    """The config class of model type ``nestlearn-<family>``."""
    return _lookup(_CONFIGS, family)


def model_class_for(family: str) -> type[NestlearnForCausalLM]:
    """The ``...ForCausalLM`` class of model type ``nestlearn-<family>``."""
    return _lookup(_MODELS, family)


def config_for(cfg: ModelConfig, **kwargs: Any) -> NestlearnConfig:
    """The Hugging Face config of a nestlearn :class:`ModelConfig` (its family's class).

    ``kwargs`` go to :class:`~transformers.PretrainedConfig` (``eos_token_id``, ...).
    """
    return config_class_for(cfg.family)(nestlearn=cfg.to_dict(), **kwargs)
