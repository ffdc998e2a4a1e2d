"""A run folder's housekeeping: who owns it, which config it runs, and its metrics log.

A run folder holds ``config.yaml``, ``metrics.jsonl`` and ``checkpoints/``. The rules that keep
one run from being lost or mixed with another:

* a new run refuses a folder that already holds a run, unless asked to continue it
  (``resume``) or to replace it (``force``, which deletes only those three entries and the
  tracker files of the replaced run: ``tensorboard/`` and ``wandb_id``, so that the new run
  neither mixes its TensorBoard events with the old ones nor continues the old W&B run;
  W&B's own ``wandb/`` folder, which may hold offline runs not yet synced, is kept);
* a resumed run takes its config from the newest good checkpoint (each checkpoint stores
  the config it was trained with), never from defaults; ``config.yaml`` is checked and a
  damaged one is reported;
* ``metrics.jsonl`` is cut back to the step the run resumes from, so every step is logged once.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from nestlearn.train.checkpoint import Checkpoint, list_checkpoints, load_latest
from nestlearn.train.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_run_config,
)
from nestlearn.utils.files import atomic_write_text

logger = logging.getLogger(__name__)

RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints")
TRACKER_FILES = ("tensorboard", "wandb_id")  # written by train/tracking.py; --force drops them


class RunExistsError(ValueError):
    """The output folder already holds another run."""


def run_contents(run_dir: str | Path) -> list[str]:
    """What in ``run_dir`` belongs to a run (empty when it holds none)."""
    run_dir = Path(run_dir)
    found = []
    if (run_dir / "config.yaml").exists():
        found.append("config.yaml")
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists() and metrics.stat().st_size > 0:
        found.append("metrics.jsonl")
    ckpts = list_checkpoints(run_dir / "checkpoints")
    if ckpts:
        found.append(f"{len(ckpts)} checkpoint(s) up to {ckpts[-1].name}")
    return found


def claim_run_dir(run_dir: str | Path, *, resume: bool, force: bool, write: bool = True) -> None:
    """Make sure a run may use ``run_dir``: refuse a file, and a folder holding another run
    unless ``resume`` (continue it) or ``force`` (delete its config, metrics, checkpoints and
    tracker files :data:`TRACKER_FILES`; nothing else in the folder is touched).
    ``write=False`` checks only (non-main ranks)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} is a file, not a folder; choose another --out")
    if resume:
        return
    found = run_contents(run_dir)
    if not found:
        return
    if not force:
        raise RunExistsError(
            f"{run_dir} already holds a run ({', '.join(found)}); continue it with "
            f"`nestlearn train --resume {run_dir}`, replace it with --force, or choose another "
            "--out (in Python: resume=True / force=True)"
        )
    if write:
        logger.warning("--force: replacing the run in %s (%s)", run_dir, ", ".join(found))
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
        for name in ("config.yaml", "metrics.jsonl", "wandb_id"):
            (run_dir / name).unlink(missing_ok=True)


def tidy_run_dir(run_dir: str | Path) -> None:
    """Delete temporary files a killed process left (``.config.yaml.tmp-*`` and the like)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for name in ("config.yaml", "metrics.jsonl"):
        for tmp in run_dir.glob(f".{name}.tmp-*"):
            tmp.unlink(missing_ok=True)
            logger.warning("removed the half-written %s", tmp)


def resume_config(
    run_dir: str | Path, overrides: list[str] | None = None
) -> tuple[TrainConfig, Checkpoint | None]:
    """The config a resumed run continues with, and the checkpoint it continues from.

    The config is the one stored in the newest good checkpoint (with ``overrides`` applied);
    ``config.yaml`` is used only when no checkpoint exists yet (or for checkpoints written
    before checkpoints stored their config). A damaged ``config.yaml`` is reported: logged
    when the checkpoint's copy stands in for it, an error when nothing does.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(
            f"{run_dir} is not a run folder; --resume needs one made by `nestlearn train`"
        )
    ckpt = load_latest(run_dir / "checkpoints")
    saved_error = None
    try:
        saved = load_run_config(run_dir / "config.yaml")
    except ConfigError as e:
        saved, saved_error = None, e
    if ckpt is not None and ckpt.config is not None:
        base = copy.deepcopy(ckpt.config)
        if saved_error is not None:
            logger.warning("%s; using the copy in %s", saved_error, ckpt.path)
        elif saved is not None and saved != ckpt.config:
            logger.warning(
                "%s differs from the config stored in %s (%s); using the checkpoint's: pass "
                "changes as overrides to --resume",
                run_dir / "config.yaml",
                ckpt.path,
                config_diff(ckpt.config, saved),
            )
    elif saved is not None:
        base = saved
    else:
        raise saved_error or ConfigError(f"{run_dir} holds no config")
    return from_dict(TrainConfig, apply_overrides(base, list(overrides or []))), ckpt


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str:
    """The keys where two nested config mappings differ, as ``key: a -> b`` (first six)."""
    out = []
    for k in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = config_diff(va, vb, f"{prefix}{k}.")
            out += [sub] if sub else []
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return ", ".join(out[:6])


def truncate_metrics(path: str | Path, step: int) -> int:
    """Drop every record of ``metrics.jsonl`` after ``step`` (and unreadable lines), atomically;
    returns the number of records dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and int(rec.get("step", 0)) <= step
        except (ValueError, TypeError):
            ok = False
        if ok:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(k + "\n" for k in keep))
    return dropped


def describe_checkpoint(ckpt: Checkpoint | None) -> str:
    return "no checkpoint" if ckpt is None else f"{ckpt.path} (step {ckpt.step})"


def check_state_shapes(model_state: dict[str, Any], ckpt: Checkpoint, hint: str) -> None:
    """Refuse a checkpoint whose tensors do not fit ``model_state`` (names and shapes), naming
    the first differences and ``hint`` (how to fix it)."""
    bad = []
    for name, t in ckpt.model.items():
        if name in model_state and tuple(model_state[name].shape) != tuple(t.shape):
            bad.append(
                f"{name} is {list(t.shape)} in the checkpoint, {list(model_state[name].shape)} here"
            )
    if bad:
        raise ConfigError(
            f"checkpoint {ckpt.path} does not fit this model: {'; '.join(bad[:4])}"
            + (f" (and {len(bad) - 4} more)" if len(bad) > 4 else "")
            + f". {hint}"
        )
