"""Freeze in-context memory updates: the API of :mod:`nestlearn.memory.freeze`, re-exported
where model users look for it (``from nestlearn.models import set_memory_frozen``)."""

from __future__ import annotations

from nestlearn.memory.freeze import frozen_memory, memory_modules, set_memory_frozen

__all__ = ["frozen_memory", "memory_modules", "set_memory_frozen"]
