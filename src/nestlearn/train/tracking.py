"""Experiment tracking: where the trainer's metric records go besides ``metrics.jsonl``.

``train.log_to`` is a comma-separated list of ``jsonl`` (always on: ``metrics.jsonl`` is the run's
record that resume, ``compare`` and the reports read), ``tensorboard`` (event files under
``RUN/tensorboard``) and ``wandb`` (Weights & Biases; ``train.wandb_mode=offline``, or
``WANDB_MODE=offline`` in the environment, writes the run under ``RUN/wandb`` for a later
``wandb sync`` and never touches the network). TensorBoard and W&B are optional extras:
``pip install "nestlearn[tracking]"``.

Records are the trainer's JSONL lines; each numeric field becomes a scalar at the record's
``step``, named ``train/<key>`` (loss, lr, grad_norm, tokens_per_s, ...), ``val/<key>`` for
``val_<key>`` fields, and ``mem/...`` as is (memory statistics, see ``memory_stats.py``).
Trackers are built on rank 0 only.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOG_TARGETS = ("jsonl", "tensorboard", "wandb")
WANDB_MODES = ("", "online", "offline", "disabled")
_EXTRA = 'pip install "nestlearn[tracking]"'


def parse_log_to(value: str) -> list[str]:
    """``"jsonl,tensorboard"`` -> ``["jsonl", "tensorboard"]``; unknown names are refused."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in LOG_TARGETS]
    if bad:
        raise ValueError(
            f"train.log_to: unknown target {bad[0]!r}; choose from {', '.join(LOG_TARGETS)} "
            "(comma-separated, e.g. jsonl,tensorboard)"
        )
    if "jsonl" not in names:
        raise ValueError(
            f"train.log_to={value!r} must include jsonl: metrics.jsonl is the run's record that "
            "resume, compare and the reports read; e.g. train.log_to=jsonl,tensorboard"
        )
    return list(dict.fromkeys(names))


def check_available(targets: list[str]) -> None:
    """Refuse, before any work, a target whose package is not installed."""
    need = {"tensorboard": "tensorboard", "wandb": "wandb"}
    for t in targets:
        pkg = need.get(t)
        if pkg and importlib.util.find_spec(pkg) is None:
            raise ValueError(
                f"train.log_to includes {t} but the {pkg} package is not installed; {_EXTRA} "
                f"(or pip install {pkg}), or drop {t} from train.log_to"
            )


def scalar_name(key: str) -> str:
    """The tracker name of a JSONL field: ``val_loss`` -> ``val/loss``, ``loss`` -> ``train/loss``."""
    if key.startswith("mem/"):
        return key
    if key.startswith("val_"):
        return "val/" + key[4:]
    return "train/" + key


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a record (``step`` excluded) under their tracker names."""
    out = {}
    for k, v in record.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[scalar_name(k)] = float(v)
    return out


class TensorBoardTracker:
    """Scalars to ``RUN/tensorboard`` (events after ``start_step`` are purged on resume)."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dir = run_dir / "tensorboard"
        self.writer = SummaryWriter(
            log_dir=str(self.dir), purge_step=start_step + 1 if start_step else None
        )

    def log(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run per run folder (its id is kept in ``RUN/wandb_id`` so a resume continues it)."""

    def __init__(
        self, run_dir: Path, name: str, config: dict[str, Any], project: str, mode: str
    ) -> None:
        import wandb

        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        (run_dir / "wandb").mkdir(exist_ok=True)
        self.run = wandb.init(
            project=project,
            name=name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config,
            mode=mode or os.environ.get("WANDB_MODE") or None,
        )

    def log(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        if self.run.step > step:  # replayed after a resume: identical values, already logged
            return
        self.run.log(scalars(record), step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers of ``targets`` other than jsonl (which the trainer writes itself)."""

    def __init__(
        self,
        targets: list[str],
        run_dir: Path,
        *,
        name: str,
        config: dict[str, Any],
        start_step: int = 0,
        wandb_project: str = "nestlearn",
        wandb_mode: str = "",
    ) -> None:
        check_available(targets)
        self.trackers: list[Any] = []
        if "tensorboard" in targets:
            self.trackers.append(TensorBoardTracker(run_dir, start_step))
        if "wandb" in targets:
            self.trackers.append(WandbTracker(run_dir, name, config, wandb_project, wandb_mode))

    def log(self, record: dict[str, Any]) -> None:
        for t in self.trackers:
            t.log(record)

    def close(self) -> None:
        for t in self.trackers:
            try:
                t.close()
            except Exception as e:  # never lose a finished run to a tracker's shutdown
                logger.warning("closing %s failed: %s", type(t).__name__, e)
        self.trackers = []
