"""Turning a :class:`~nestlearn.ops.nested.MemorySpec` into something to train and benchmark.

* :func:`register_memory`: a family and a ``<name>-tiny`` preset in this process (Python use:
  ``build_model``, ``bench_models``, ``run_compare``);
* :func:`recipe`: a YAML recipe for ``nestlearn train --config`` (family ``nested``, the spec in
  ``model.mixer``), so the command line needs no registration;
* :func:`bench_name`: the ``--model`` argument of ``nestlearn bench`` for the spec.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from nestlearn.models.families.miras import NestedOptions, register_nested_family, tiny_ffn
from nestlearn.ops.nested import MemorySpec
from nestlearn.utils.config import check_keys

__all__ = ["bench_name", "recipe", "register_memory", "spec_overrides"]


def spec_overrides(spec: MemorySpec, **layer_options: Any) -> dict[str, Any]:
    """The ``model.mixer`` mapping of the ``nested`` family for ``spec`` (non-default fields only)
    plus layer options (:class:`~nestlearn.models.families.miras.NestedOptions`)."""
    check_keys(layer_options, [f.name for f in fields(NestedOptions)], what="layer options")
    default = MemorySpec()
    out = {f.name: getattr(spec, f.name) for f in fields(MemorySpec)
           if getattr(spec, f.name) != getattr(default, f.name) or f.name == "options"}  # fmt: skip
    if not out.get("options"):
        out.pop("options", None)
    return {**out, **layer_options}


def register_memory(name: str, spec: MemorySpec, description: str = "") -> str:
    """Register ``spec`` as family ``name`` with a ``<name>-tiny`` preset (hope-tiny's size).

    Returns the preset name. The registration lives in this process; for the command line use
    :func:`recipe` (or ``--model nested:...``, :func:`bench_name`).
    """
    what = description or f"user memory {name}: {spec.describe()} + SwiGLU"
    return register_nested_family(name, spec.to_dict(), what)


def recipe(
    spec: MemorySpec,
    path: str | Path | None = None,
    *,
    steps: int = 400,
    batch_size: int = 16,
    lr: float = 3e-3,
    **layer_options: Any,
) -> dict[str, Any]:
    """A ``nestlearn train --config`` recipe training ``spec`` at hope-tiny's size on the embedded
    corpus (the recipe of ``configs/transformer-tiny.yaml``); written to ``path`` when given.

    The FFN width is matched so the model holds hope-tiny's parameter count (within ~1%).
    """
    mixer = spec_overrides(spec, **layer_options)
    data = {
        "preset": "nested-demo",
        "model": {"mixer": mixer, "ffn_hidden": tiny_ffn("nested", mixer)},
        "data": {"tokenizer": "byte", "seq_len": 256, "batch_size": batch_size},
        "optim": {"name": "adamw", "lr": lr, "weight_decay": 0.1},
        "schedule": {"warmup_steps": min(30, max(1, steps // 10)), "min_lr_ratio": 0.1},
        "train": {"steps": steps, "eval_every": max(1, steps // 4), "ckpt_every": steps},
    }
    if path is not None:
        Path(path).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return data


def bench_name(spec: MemorySpec, **layer_options: Any) -> str:
    """``nested:key=value,...`` for ``nestlearn bench --model`` (strings quoted so that e.g.
    ``retention='none'`` is not read as None)."""
    mixer = spec_overrides(spec, **layer_options)
    if "options" in mixer:
        raise ValueError("spec.options cannot be passed on the bench command line; use Python")
    parts = [f"{k}={v!r}" for k, v in mixer.items()]
    return "nested" + (":" + ",".join(parts) if parts else "")
