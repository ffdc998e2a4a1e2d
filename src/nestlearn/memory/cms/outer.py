"""Outer-mode CMS (``cms.mode="outer"``): the levels are ordinary parameters that the outer
optimizer updates every ``k_l`` steps with accumulated gradients (eq. 71 over optimizer steps).

:meth:`ContinuumMemory.outer_step <nestlearn.memory.cms.module.ContinuumMemory.outer_step>`
holds each level's gradient back between its updates; these functions run it for a whole model,
by hand (:func:`apply_outer_schedule`) or as an optimizer hook (:func:`attach_outer_schedule`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nestlearn.memory.cms.module import ContinuumMemory

__all__ = ["apply_outer_schedule", "attach_outer_schedule"]


def _cms_modules(model: nn.Module) -> list[ContinuumMemory]:
    return [m for m in model.modules() if isinstance(m, ContinuumMemory)]


def apply_outer_schedule(model: nn.Module) -> None:
    """Run :meth:`ContinuumMemory.outer_step` on every outer-mode CMS of ``model``."""
    for m in _cms_modules(model):
        m.outer_step()


def attach_outer_schedule(model: nn.Module, optimizer: torch.optim.Optimizer) -> Any:
    """Apply the outer schedule automatically at the start of every ``optimizer.step()``.

    Every training loop of nestlearn calls this once, right after building its optimizer (the
    trainer, ``nestlearn.studies.recall.fit``, the continual-learning loops, ``bench``), so
    ``cms.mode=outer`` acts wherever a model is trained. A loop of your own does the same::

        opt = torch.optim.AdamW(model.parameters())
        attach_outer_schedule(model, opt)

    Returns the hook handle (``.remove()`` detaches it), or ``None`` when ``model`` has no
    outer-mode CMS (nothing to do). Attaching the same modules to the same optimizer again
    returns the first handle: the schedule must advance once per step.
    """
    mods = [m for m in _cms_modules(model) if m.mode == "outer"]
    if not mods:
        return None
    hooks = optimizer.__dict__.setdefault("_nestlearn_outer_hooks", {})
    key = frozenset(id(m) for m in mods)
    old = hooks.get(key)
    if old is not None and old.id in optimizer._optimizer_step_pre_hooks:
        return old

    def hook(*_: Any) -> None:
        for m in mods:
            m.outer_step()

    hooks[key] = handle = optimizer.register_step_pre_hook(hook)
    return handle
