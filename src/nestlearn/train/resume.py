"""Saving and restoring a trainer's state: weights, optimizer moments, RNG and step counters.

:func:`save_trainer` writes a checkpoint of a running :class:`~nestlearn.train.trainer.Trainer`
(every rank takes part, rank 0 writes); :func:`load_model_state` and
:func:`load_optimizer_state` put a checkpoint back when a run is resumed. The file format is
``nestlearn.train.checkpoint``'s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nestlearn.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_latest,
    save_checkpoint,
    set_aside_newer,
)
from nestlearn.train.config import ConfigError, config_dict
from nestlearn.train.rundir import check_state_shapes, truncate_metrics

if TYPE_CHECKING:
    from nestlearn.train.trainer import Trainer

logger = logging.getLogger("nestlearn.train.trainer")  # the trainer's log, as before the split

__all__ = ["load_model_state", "load_optimizer_state", "save_trainer"]


def load_model_state(trainer: Trainer, ckpt: Checkpoint | None) -> Checkpoint | None:
    """Load the checkpoint's weights (before wrapping) and RNG state; return it.

    Every resume cuts ``metrics.jsonl`` back to the checkpoint's step (to 0 without one),
    and sets aside checkpoints newer than it (they failed verification)."""
    if ckpt is None:
        ckpt = load_latest(trainer.ckpt_dir, map_location="cpu")
    if ckpt is None:
        logger.info("no checkpoint in %s: starting from step 0", trainer.ckpt_dir)
        if trainer.dist.is_main:
            truncate_metrics(trainer.metrics_path, 0)
        return None
    check_state_shapes(
        trainer.model.state_dict(),
        ckpt,
        "model.* overrides cannot change the shape of a run being resumed; drop them, or "
        "start a new run in another --out",
    )
    missing, unexpected = trainer.model.load_state_dict(ckpt.model, strict=False)
    missing = [k for k in missing if not (k == "head.weight" and trainer.cfg.model.tie_embeddings)]
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {ckpt.path} does not fit this model (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); was model.* changed? Resume without it"
        )
    if "torch_cpu" in ckpt.rng:
        torch.set_rng_state(ckpt.rng["torch_cpu"])
    if "torch_cuda" in ckpt.rng and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(ckpt.rng["torch_cuda"], trainer.device)
    trainer.start_step = ckpt.step
    trainer.tokens_seen = int(ckpt.trainer.get("tokens_seen", 0))
    if trainer.start_step >= trainer.cfg.train.steps:
        logger.info("%s is at step %d of train.steps=%d", ckpt.path, ckpt.step,
                    trainer.cfg.train.steps)  # fmt: skip
        return ckpt
    logger.info("resumed from %s (step %d)", ckpt.path, ckpt.step)
    if trainer.dist.is_main:
        set_aside_newer(trainer.ckpt_dir, ckpt.step)
        truncate_metrics(trainer.metrics_path, ckpt.step)
    return ckpt


def load_optimizer_state(trainer: Trainer, state: dict[str, Any], where: Path) -> None:
    """Load the optimizer state of a checkpoint at ``where`` into the trainer's optimizer."""
    # The config is the truth for hyper-parameters (an optim.lr override on --resume must
    # act): keep the freshly built groups' settings, take only the state from the file.
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizer.param_groups]
    try:
        if trainer._fsdp():
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(
                trainer.model,
                trainer.optimizer,
                state,
                options=StateDictOptions(full_state_dict=True),
            )
        else:
            trainer.optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as e:
        raise CheckpointError(
            f"the optimizer state in {where} does not fit optim.name="
            f"{trainer.cfg.optim.name} ({str(e)[:200]}); was optim.name changed? Resume with "
            "the run's optimizer, or start a new run"
        ) from None
    for g, f in zip(trainer.optimizer.param_groups, fresh):
        g.update(f)


def save_trainer(trainer: Trainer, step: int) -> Path | None:
    """Checkpoint after ``step`` completed steps (rank 0 writes; all ranks take part)."""
    if trainer._fsdp():
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(trainer.model, options=opts)
        optim_sd = get_optimizer_state_dict(trainer.model, trainer.optimizer, options=opts)
    else:
        model_sd = trainer.model.state_dict()
        optim_sd = trainer.optimizer.state_dict()
    path = None
    if trainer.dist.is_main:
        rng = {"torch_cpu": torch.get_rng_state()}
        if trainer.device.type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state(trainer.device)
        path = save_checkpoint(
            trainer.ckpt_dir,
            step,
            model_sd,
            optim_sd,
            {"tokens_seen": trainer.tokens_seen, "params": trainer.params},
            rng,
            keep_last=trainer.cfg.train.keep_last,
            config=config_dict(trainer.cfg),
        )
    if trainer.dist.enabled:
        torch.distributed.barrier()
    return path
