"""Stopping a run that cannot learn any more: divergence and a dead model.

:func:`stop_diverged` is called before the optimizer step when the loss or the gradient norm
is not finite: the bad update is never applied, the weights of the last good step are kept in
a checkpoint, and the run stops. :func:`stop_dead` is called when the gradient norm has been
exactly 0 for ``train.dead_grad_steps`` steps in a row. Both raise :class:`TrainingStopped`
with a message that names the step, the checkpoint to go back to and what to change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from nestlearn.train.checkpoint import list_checkpoints, step_dir_name

if TYPE_CHECKING:
    from nestlearn.train.trainer import Trainer


class TrainingStopped(RuntimeError):
    """The run diverged (non-finite loss or gradient) or died (zero gradient); the message
    says at which step, which checkpoint holds the last good weights, and what to change."""


def stop_diverged(
    trainer: Trainer, step: int, loss: float, gnorm: float, dead_since: int | None
) -> NoReturn:
    """Step ``step + 1`` gave a non-finite loss or gradient: keep the weights after ``step``
    (the last good ones) in a checkpoint and stop."""
    cfg = trainer.cfg
    path = trainer.ckpt_dir / step_dir_name(step)
    if not path.is_dir():
        path = trainer.save(step) or path
    dead = (
        f" (the gradient norm had been exactly 0 since step {dead_since}: the model was dead "
        "before it diverged)"
        if dead_since is not None
        else ""
    )
    raise TrainingStopped(
        f"the run diverged at step {step + 1}: loss {loss}, gradient norm {gnorm}. The update "
        f"was not applied; the weights of step {step} are in {path}{dead}. Lower optim.lr "
        f"(now {cfg.optim.lr:g}) or set train.grad_clip (now {cfg.train.grad_clip:g}), then "
        f"continue with `nestlearn train --resume {trainer.run_dir} optim.lr=...`"
    )


def stop_dead(trainer: Trainer, first: int, step: int) -> NoReturn:
    """The gradient norm has been exactly 0 from step ``first`` to ``step``: stop. No checkpoint
    is written (the weights are dead); the newest one from before ``first`` is named."""
    cfg = trainer.cfg
    before = [p for p in list_checkpoints(trainer.ckpt_dir) if int(p.name[5:]) < first]
    kept = (
        f"the newest checkpoint from before it is {before[-1]}"
        if before
        else ("no checkpoint predates it")
    )
    raise TrainingStopped(
        f"the model is dead: the gradient norm has been exactly 0 from step {first} to {step} "
        f"(train.dead_grad_steps={cfg.train.dead_grad_steps}), so nothing learns any more; "
        f"{kept}. This usually means optim.lr (now {cfg.optim.lr:g}) is far too large: start "
        "again with a lower one"
    )
