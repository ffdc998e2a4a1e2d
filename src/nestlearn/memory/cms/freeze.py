"""The CMS-only forms of the one freeze API (:mod:`nestlearn.memory.freeze`): freeze the
in-context updates of the Continuum Memory Systems of a model and nothing else.

Frozen levels read with their current fast weights and never update; the finished terms of a
chunk in progress are kept (applied at its boundary once unfrozen), tokens read while frozen add
none. ``set_memory_frozen(model)`` freezes every in-context memory (the Titans memories too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from nestlearn.memory.cms.module import ContinuumMemory
from nestlearn.memory.freeze import frozen_memory, set_memory_frozen

__all__ = ["frozen_cms", "set_cms_frozen"]


def set_cms_frozen(model: nn.Module, frozen: bool = True) -> None:
    """Freeze (or unfreeze) every CMS in ``model``: ``set_memory_frozen(model, frozen,
    only=ContinuumMemory)``."""
    set_memory_frozen(model, frozen, only=ContinuumMemory)


@contextlib.contextmanager
def frozen_cms(model: nn.Module, frozen: bool = True) -> Iterator[None]:
    """Context manager form of :func:`set_cms_frozen`; restores each module's flag."""
    with frozen_memory(model, frozen, only=ContinuumMemory):
        yield
