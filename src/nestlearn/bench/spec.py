"""``nestlearn bench --model`` specs: ``name`` or ``name:key=value,...`` to a ModelConfig."""

from __future__ import annotations

import ast
import copy
import logging
from dataclasses import fields
from typing import Any

from nestlearn.models import FAMILIES, PRESETS, ModelConfig

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_DIM", "DEFAULT_LAYERS", "DEFAULT_VOCAB", "parse_model_spec", "resolve_config"]

DEFAULT_DIM, DEFAULT_LAYERS, DEFAULT_VOCAB = 256, 4, 256


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name"`` or ``"name:key=value,key=value"`` into ``(name, overrides)``.

    ``name`` is a family (``FAMILIES``) or a preset (``PRESETS``). Values are read as Python
    literals (ints, floats, ``true``/``false``/``none``), otherwise kept as strings.
    """
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in FAMILIES and name not in PRESETS:
        raise ValueError(
            f"unknown --model {name!r}; choose a family ({', '.join(sorted(FAMILIES))}) "
            f"or a preset ({', '.join(sorted(PRESETS))}), optionally with ':key=value,...'"
        )
    overrides: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"bad option {item!r} in --model {spec!r}; write key=value")
        overrides[key.strip()] = _parse_value(value.strip())
    return name, overrides


def resolve_config(
    spec: str | ModelConfig,
    *,
    dim: int | None = None,
    layers: int | None = None,
    vocab: int | None = None,
    max_seq_len: int = 512,
    naive: bool = False,
) -> tuple[ModelConfig, bool]:
    """The :class:`ModelConfig` a model spec names, and whether ``naive`` was applied.

    Precedence, lowest first: bench defaults (d=256, 4 layers, vocab 256) or the preset's own
    shape; then ``dim``/``layers``/``vocab`` when given; then the spec's ``key=value`` options
    (:class:`ModelConfig` fields; any other key goes into ``mixer``). ``n_heads`` defaults to
    ``max(1, dim // 64)``. ``max_seq_len`` is raised to at least the given value.
    """
    if isinstance(spec, ModelConfig):
        cfg = copy.deepcopy(spec)
        cfg.max_seq_len = max(cfg.max_seq_len, max_seq_len)
        base = cfg.to_dict()
        overrides: dict[str, Any] = {}
    else:
        name, overrides = parse_model_spec(spec)
        if name in FAMILIES:
            base = {"family": name, "vocab_size": DEFAULT_VOCAB, "dim": DEFAULT_DIM,
                    "n_layers": DEFAULT_LAYERS}  # fmt: skip
        else:
            base = copy.deepcopy(PRESETS[name])
            if not base.get("vocab_size"):
                base["vocab_size"] = DEFAULT_VOCAB
        if dim is not None and dim != base.get("dim"):
            base["dim"] = dim
            base.pop("n_heads", None)  # a preset's head count may not divide the new width
            base.pop("n_kv_heads", None)
        if layers is not None:
            base["n_layers"] = layers
        if vocab is not None:
            base["vocab_size"] = vocab
        base.setdefault("n_heads", max(1, base["dim"] // 64))
    known = {f.name for f in fields(ModelConfig)}
    mixer = dict(base.get("mixer") or {})
    for key, value in overrides.items():
        if key in known:
            base[key] = value
        else:
            mixer[key] = value
    base["max_seq_len"] = max(int(base.get("max_seq_len", 0)), max_seq_len)
    family = base.get("family", "transformer")
    applied = False
    if naive:
        if getattr(FAMILIES.get(family), "supports_naive", False):
            mixer["naive"] = True
            applied = True
        else:
            logger.warning("family %r does not declare supports_naive; --naive ignored", family)
    base["mixer"] = mixer
    return ModelConfig(**base), applied
