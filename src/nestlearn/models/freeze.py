"""Freeze in-context memory updates: read the current memory, write nothing.

The protocol: any submodule that learns in context (its per-sequence state changes by a learning
rule, not just by appending inputs) defines

* ``set_memory_frozen(frozen: bool) -> None``: while frozen, reads use the memory as it is in the
  state and the state's memory is returned unchanged;
* ``memory_frozen`` (a bool attribute or property): the current setting.

Implemented by :class:`~nestlearn.memory.NeuralMemory` (Titans) and
:class:`~nestlearn.memory.cms.ContinuumMemory` (CMS). Buffers that only record the inputs (KV
caches, short-conv tails, SSM states) are not memories in this sense and keep advancing, so a
frozen model still reads its context normally.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["frozen_memory", "memory_modules", "set_memory_frozen"]


def memory_modules(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` (itself included) that implements ``set_memory_frozen``."""
    return [m for m in model.modules() if callable(getattr(m, "set_memory_frozen", None))]


def set_memory_frozen(model: nn.Module, frozen: bool = True) -> int:
    """Freeze (``True``) or unfreeze the in-context memory updates of every module in ``model``.

    Returns the number of modules switched; 0 means the model has no in-context memory.
    """
    mods = memory_modules(model)
    for m in mods:
        m.set_memory_frozen(bool(frozen))
    return len(mods)


@contextlib.contextmanager
def frozen_memory(model: nn.Module, frozen: bool = True) -> Iterator[int]:
    """Context manager form of :func:`set_memory_frozen`; restores every module's setting.

    Yields the number of modules switched.
    """
    mods = memory_modules(model)
    before = [bool(getattr(m, "memory_frozen", False)) for m in mods]
    for m in mods:
        m.set_memory_frozen(bool(frozen))
    try:
        yield len(mods)
    finally:
        for m, f in zip(mods, before):
            m.set_memory_frozen(f)
