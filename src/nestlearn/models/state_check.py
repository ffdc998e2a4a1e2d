"""Checks that a loaded per-sequence state fits the model that will continue it.

:func:`mismatch` compares a loaded state with the model's fresh ``init_state`` (kinds of
nodes, tensor shapes with a KV cache's time axis free, finite values); :func:`probe` runs one
token from a copy of the state (a part the fresh state leaves ``None`` is only checked there);
:func:`state_classes` and :func:`nestlearn_state_classes` are the classes a state file may name.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import torch

from nestlearn.models.skeleton import LanguageModel, ModelState


class StateFileError(ValueError):
    """A state file is unreadable, of another format, or does not fit the model."""


def is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


@torch.no_grad()
def probe(model: LanguageModel, state: ModelState, path: Path, here: str) -> None:
    """Run one token through ``model`` from (a copy of) ``state``: a state whose optional parts
    do not fit (wrong shapes the fresh state cannot show) or that yields non-finite logits is
    refused here rather than failing, or printing garbage, later."""
    B = next((t.shape[0] for t in tensor_leaves(state) if t.dim() > 0), 1)
    idx = torch.zeros(B, 1, dtype=torch.long, device=model.embed.weight.device)
    was_training = model.training
    model.eval()
    try:
        logits, _ = model(idx, state=copy.deepcopy(state))
    except (ValueError, RuntimeError, TypeError, IndexError, AttributeError) as e:
        raise StateFileError(
            f"state file {path} does not work with {here} ({type(e).__name__}: {str(e)[:160]}); "
            "re-create it with this model (--state-out / save_state)"
        ) from None
    finally:
        model.train(was_training)
    if not bool(torch.isfinite(logits).all()):
        raise StateFileError(
            f"state file {path} makes {here} predict non-finite values; re-create it"
        )


def tensor_leaves(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, ModelState):
        return tensor_leaves(obj.layers)
    if is_namedtuple(obj):
        return [t for v in obj for t in tensor_leaves(v)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in tensor_leaves(getattr(obj, f.name))]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensor_leaves(v)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensor_leaves(v)]
    return []


def nestlearn_state_classes() -> list[type]:
    found = []
    for name, module in list(sys.modules.items()):
        if name == "nestlearn" or name.startswith("nestlearn."):
            for obj in vars(module).values():
                if isinstance(obj, type) and (
                    dataclasses.is_dataclass(obj)
                    or (issubclass(obj, tuple) and hasattr(obj, "_fields"))
                ):
                    found.append(obj)
    return found


def state_classes(obj: Any, found: set[type] | None = None) -> frozenset[type]:
    """The NamedTuple and dataclass types in a state tree (those a file may name)."""
    found = set() if found is None else found
    if is_namedtuple(obj) or (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        found.add(type(obj))
        for v in (
            obj if is_namedtuple(obj) else (getattr(obj, f.name) for f in dataclasses.fields(obj))
        ):
            state_classes(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            state_classes(v, found)
    elif isinstance(obj, dict):
        for v in obj.values():
            state_classes(v, found)
    return frozenset(found)


def mismatch(fresh: Any, got: Any, path: str) -> str:
    """Where ``got`` (a loaded state) differs in kind or shape from ``fresh`` (this model's
    ``init_state``), or holds a non-finite value; ``""`` when it fits. A dimension of size 0 in
    the fresh state (a KV cache's time axis) may have any size; where the fresh state holds
    ``None`` (a part filled in later) any shape is accepted here and left to the probe, but
    not a non-finite value (the probe's one token need not read such a part, e.g. a Titans
    chunk anchor)."""
    where = path or "the state"
    if fresh is None:  # an optional part (filled in later): its shapes are the probe's to check
        bad = next(
            (
                t
                for t in tensor_leaves(got)
                if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
            ),
            None,
        )
        return "" if bad is None else f"{where} holds non-finite values (inf or nan)"
    if got is None:
        return f"{where} is empty (None), this model keeps a {type(fresh).__name__} there"
    if isinstance(fresh, torch.Tensor) or isinstance(got, torch.Tensor):
        if not (isinstance(fresh, torch.Tensor) and isinstance(got, torch.Tensor)):
            return f"{where} is a {type(got).__name__}, expected a tensor"
        ok = got.ndim == fresh.ndim and all(
            f == 0 or f == g for f, g in zip(fresh.shape, got.shape)
        )
        if not ok:
            want = ["*" if f == 0 else f for f in fresh.shape]
            return f"tensor {where} has shape {list(got.shape)}, this model needs {want}"
        if got.is_floating_point() != fresh.is_floating_point():
            return f"tensor {where} has dtype {got.dtype}, this model needs {fresh.dtype}"
        if got.is_floating_point() and got.numel() and not bool(torch.isfinite(got).all()):
            return f"tensor {where} holds non-finite values (inf or nan)"
        return ""
    if isinstance(got, float) and not math.isfinite(got):
        return f"{where} is {got}"
    sub = f"{path}." if path else ""
    if is_namedtuple(fresh) or dataclasses.is_dataclass(fresh):
        if type(got) is not type(fresh):
            return f"{where} is a {type(got).__name__}, this model keeps a {type(fresh).__name__}"
        names = (
            type(fresh)._fields
            if is_namedtuple(fresh)
            else [f.name for f in dataclasses.fields(fresh) if f.init]
        )
        for n in names:
            problem = mismatch(getattr(fresh, n), getattr(got, n), sub + n)
            if problem:
                return problem
        return ""
    if isinstance(fresh, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(fresh):
            return f"{where} has {len(got) if isinstance(got, (list, tuple)) else type(got).__name__} entries, this model {len(fresh)}"
        for i, (f, g) in enumerate(zip(fresh, got)):
            problem = mismatch(f, g, f"{sub}{i}")
            if problem:
                return problem
        return ""
    if isinstance(fresh, dict):
        if not isinstance(got, dict) or sorted(got) != sorted(fresh):
            return f"{where} has other keys than this model's state"
        for k in fresh:
            problem = mismatch(fresh[k], got[k], sub + str(k))
            if problem:
                return problem
    return ""
