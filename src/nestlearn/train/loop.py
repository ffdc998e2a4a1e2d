"""The one training step, and the plain loop built on it, shared by every loop that trains.

The trainer (``Trainer.fit``: resume, micro-batches, ranks, checkpoints), the synthetic-task
recipes (``nestlearn.studies.recall.fit``), the continual-learning domain sequence and its EWC
learner all train through these pieces, so the learning-rate schedule, clipping and the
divergence guard are written once:

- :func:`prepare_optimizer`: attach the CMS outer schedule (``cms.mode=outer``, docs/cms.md)
  and remember each group's peak rate as ``initial_lr``.
- :func:`set_lr_factor`: scale every group's own peak rate (the schedule's multiplier).
- :func:`finish_step`: after ``backward``: clip (or measure) the gradient norm, refuse a
  non-finite loss or norm *before* the update touches the weights, step, clear the gradients.
- :func:`fit_steps`: the plain loop (schedule, one batch per step, :func:`finish_step`,
  periodic evaluation with early stopping) for callers without runs, ranks or checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import NoReturn

import torch
from torch import nn

from nestlearn.memory.cms import attach_outer_schedule

__all__ = ["clip_gradients", "finish_step", "fit_steps", "prepare_optimizer", "set_lr_factor"]

OnDiverged = Callable[[int, float, float], NoReturn]
"""``on_diverged(step, loss, grad_norm)``: raise the caller's error for a non-finite step."""


def prepare_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Attach ``model``'s CMS outer schedule to ``optimizer`` and record each group's peak rate.

    The schedule (:func:`set_lr_factor`) scales every group's own ``initial_lr``, so groups with
    different peak rates keep their ratio. A group that already has ``initial_lr`` (restored from
    a checkpoint) keeps it. Returns ``optimizer``.
    """
    attach_outer_schedule(model, optimizer)  # cms.mode=outer (docs/cms.md)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    return optimizer


def set_lr_factor(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's ``lr`` to ``initial_lr * factor`` (see :func:`prepare_optimizer`)."""
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """The total gradient norm of ``params``, clipping it to ``max_norm`` when that is > 0.

    The norm returned is the one before clipping (``clip_grad_norm_``'s); with ``max_norm <= 0``
    the gradients are left as they are and only measured.
    """
    params = list(params)
    if max_norm > 0:
        gnorm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
        gnorm = torch.stack(norms).norm() if norms else torch.zeros(())
    # a sharded (FSDP2) norm is a DTensor: its full value is the global norm
    return float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)


def finish_step(
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    *,
    step: int,
    loss: float,
    grad_clip: float,
    on_diverged: OnDiverged,
) -> float:
    """Clip, check, update and clear, once the step's gradients are in ``params``.

    A non-finite ``loss`` or gradient norm clears the gradients and calls
    ``on_diverged(step, loss, grad_norm)``, which raises: the bad update is never applied.
    Returns the gradient norm before clipping.
    """
    gnorm = clip_gradients(params, grad_clip)
    if not (math.isfinite(loss) and math.isfinite(gnorm)):
        optimizer.zero_grad(set_to_none=True)
        on_diverged(step, loss, gnorm)
        raise FloatingPointError(f"step {step + 1}: loss {loss}, gradient norm {gnorm}")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return gnorm


def fit_steps(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[torch.Tensor, ...]],
    loss_fn: Callable[..., torch.Tensor],
    *,
    steps: int,
    lr_factor: Callable[[int], float],
    grad_clip: float,
    on_diverged: OnDiverged,
    start: int = 0,
    evaluate: Callable[[], float] | None = None,
    eval_every: int = 0,
    progress: Callable[[int, float], None] | None = None,
    stop: Callable[[float], bool] | None = None,
) -> tuple[list[float], list[tuple[int, float]]]:
    """``steps`` optimizer steps of ``loss_fn(*next(batches))`` over ``module``'s parameters.

    Step ``s`` (counted from ``start``, so a caller can run a schedule in several calls) sets the
    rate to ``initial_lr * lr_factor(s)`` (call :func:`prepare_optimizer` first), backpropagates,
    and ends with :func:`finish_step`. ``evaluate`` runs every ``eval_every`` steps (counted from
    ``start``); when ``stop(score)`` is true after one, training ends there.
    Returns the per-step losses and the ``(steps done, score)`` of the evaluations.
    """
    losses: list[float] = []
    history: list[tuple[int, float]] = []
    optimizer.zero_grad(set_to_none=True)  # gradients left from before are not this step's
    for i in range(steps):
        step = start + i
        module.train()
        set_lr_factor(optimizer, lr_factor(step))
        loss = loss_fn(*next(batches))
        loss.backward()
        value = float(loss.detach())
        finish_step(optimizer, module.parameters(), step=step, loss=value, grad_clip=grad_clip,
                    on_diverged=on_diverged)  # fmt: skip
        losses.append(value)
        if progress is not None:
            progress(step, value)
        if evaluate is not None and eval_every and (i + 1) % eval_every == 0:
            history.append((i + 1, evaluate()))
            if stop is not None and stop(history[-1][1]):
                break
    return losses, history
