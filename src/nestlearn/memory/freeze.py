"""The one freeze API: read the in-context memories as they are, write nothing.

The protocol: a module that learns in context (its per-sequence state changes by a learning
rule, not just by appending inputs) defines

* ``set_memory_frozen(frozen: bool) -> None``: while frozen, reads use the memory as it is in the
  state and the state's memory is returned unchanged;
* ``memory_frozen`` (a bool attribute or property): the current setting.

Implemented by :class:`~nestlearn.memory.self_modifying.SelfModifyingTitans` (Hope),
:class:`~nestlearn.memory.neural_memory.NeuralMemory` (Titans and its MAC/MAG/MAL variants)
and :class:`~nestlearn.memory.cms.ContinuumMemory` (CMS). Buffers that only record the inputs
(KV caches, short-conv tails, SSM states) are not memories in this sense and keep advancing, so a
frozen model still reads its context normally.

A module may instead define the older zero-shot scorer hook ``set_memory_updates(enabled)``
(``enabled = not frozen``); :func:`set_memory_frozen` calls it too, and when the model itself
defines it, only that (it is responsible for its parts).

Public entry points, all this one function underneath: :func:`set_memory_frozen` and
:func:`frozen_memory` (also ``nestlearn.models``), ``nestlearn.memory.cms.set_cms_frozen`` /
``frozen_cms`` (only the CMS modules: ``only=ContinuumMemory``) and
``nestlearn.eval.zeroshot.set_memory_updates`` (``enabled = not frozen``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["frozen_memory", "memory_modules", "set_memory_frozen"]


def _hook(module: nn.Module) -> bool:
    return callable(getattr(module, "set_memory_updates", None))


def memory_modules(model: nn.Module, only: type | tuple[type, ...] | None = None) -> list[nn.Module]:
    """Every module of ``model`` (itself included) that implements ``set_memory_frozen``,
    restricted to instances of ``only`` when given."""
    return [
        m
        for m in model.modules()
        if callable(getattr(m, "set_memory_frozen", None)) and (only is None or isinstance(m, only))
    ]


def _switch(m: nn.Module, frozen: bool) -> None:
    fn = getattr(m, "set_memory_frozen", None)
    if callable(fn):
        fn(bool(frozen))
    else:
        m.set_memory_updates(not frozen)  # the older hook


def _targets(model: nn.Module, only: type | tuple[type, ...] | None) -> list[nn.Module]:
    if only is not None:
        return memory_modules(model, only)
    if _hook(model) and not callable(getattr(model, "set_memory_frozen", None)):
        return [model]  # the model handles its parts itself
    mods = memory_modules(model)
    mods += [m for m in model.modules() if _hook(m) and m not in mods]
    return mods


def set_memory_frozen(
    model: nn.Module, frozen: bool = True, *, only: type | tuple[type, ...] | None = None
) -> int:
    """Freeze (``True``) or unfreeze the in-context memory updates of every module in ``model``.

    Args:
        model: any module (a language model, a block, one memory).
        frozen: ``True`` reads without writing; ``False`` restores in-context learning.
        only: switch only the modules of this class (``ContinuumMemory`` for the CMS alone).
    Returns:
        The number of modules switched; 0 means the model has no in-context memory.
    """
    mods = _targets(model, only)
    for m in mods:
        _switch(m, frozen)
    return len(mods)


@contextlib.contextmanager
def frozen_memory(
    model: nn.Module, frozen: bool = True, *, only: type | tuple[type, ...] | None = None
) -> Iterator[int]:
    """Context manager form of :func:`set_memory_frozen`; restores every module's setting.

    Yields the number of modules switched.
    """
    mods = _targets(model, only)
    before = [bool(getattr(m, "memory_frozen", False)) for m in mods]
    for m in mods:
        _switch(m, frozen)
    try:
        yield len(mods)
    finally:
        for m, f in zip(mods, before):
            _switch(m, f)
