"""M3 against AdamW and Muon on a small ViT: tune, repeat over seeds, time (``nestlearn
vit-optim``; the Fig. 11 / Fig. 12 analogue of arXiv 2512.24695 §9.7 at CPU size).

Protocol:

1. **Tune.** Each optimizer trains with seed 0 at every learning rate of its grid; the one
   with the lowest final *validation* loss is chosen (:func:`select_lr`). The test split is
   never used for a choice.
2. **Repeat.** The chosen learning rate is trained with seeds 1 .. seeds-1 (seed 0 is reused).
   Each seed draws its own initial weights and minibatch order; the data split is fixed.
3. **Time** (Fig. 12). ``optimizer.step()`` alone, median over rounds, on copies of one model
   holding the same gradients (:func:`~nestlearn.studies.vit_optim.train.time_optimizer_steps`),
   at the study's width and at any other widths asked for.

Resumable: every finished cell (optimizer, lr, seed) is written atomically to
``out/cells/<optimizer>_lr<lr>_seed<k>.json`` with the settings it was trained under; a later
run with the same settings reuses it, and a cell that is missing, unreadable (a run killed
while writing leaves at most a temporary file) or trained under other settings is trained
again. The timing is cached the same way in ``out/timing.json``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nestlearn.studies.vit_optim.train import (
    METHODS,
    TrainSettings,
    digits_tensors,
    time_optimizer_steps,
    train_cell,
)
from nestlearn.utils.files import atomic_write_text as write_text_atomic

__all__ = ["DEFAULT_GRID", "CellStore", "StudySettings", "run_study", "select_lr"]

logger = logging.getLogger(__name__)

DEFAULT_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
"""Learning rates tried per optimizer (Muon and M3 use Muon's ``match_rms_adamw`` shape factor,
so their matrix steps have AdamW's RMS and the same grid fits all three)."""


@dataclass(frozen=True)
class StudySettings:
    train: TrainSettings = field(default_factory=TrainSettings)
    """Model, steps, schedule and optimizer details shared by every cell."""
    optimizers: tuple[str, ...] = METHODS
    """Which optimizers, in table order."""
    grids: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """Learning-rate grid per optimizer; an optimizer not named here uses ``DEFAULT_GRID``."""
    seeds: int = 3
    """Seeds at the chosen learning rate (seed 0 is the tuning run)."""
    split_seed: int = 0
    """Seed of the train / validation / test split (fixed across cells)."""
    timing_widths: tuple[int, ...] = (64, 256)
    """Model widths at which the optimizer step is timed (same depth and heads)."""
    timing_steps: int = 100
    """Timed rounds per width."""

    def __post_init__(self) -> None:
        bad = [n for n in self.optimizers if n not in METHODS]
        if bad or not self.optimizers:
            raise ValueError(
                f"optimizers {bad or '(none)'} not known; choose from {', '.join(METHODS)}"
            )
        if len(set(self.optimizers)) != len(self.optimizers):
            raise ValueError(f"optimizers repeat a name: {', '.join(self.optimizers)}")
        for name, grid in self.grids.items():
            if name not in self.optimizers:
                raise ValueError(
                    f"a learning-rate grid is given for {name!r}, which is not among the "
                    f"optimizers ({', '.join(self.optimizers)}); add it or drop the grid"
                )
            if not grid or not all(math.isfinite(v) and v > 0 for v in grid):
                raise ValueError(f"the {name} grid must be positive numbers, got {list(grid)}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.timing_steps < 0:
            raise ValueError(
                f"timing-steps must be >= 0 (0 skips the timing), got {self.timing_steps}"
            )
        for w in self.timing_widths:
            if w < 1 or w % self.train.vit.heads:
                raise ValueError(
                    f"timing width {w} must be a positive multiple of the heads "
                    f"({self.train.vit.heads})"
                )

    def grid(self, name: str) -> tuple[float, ...]:
        return tuple(sorted(set(self.grids.get(name, DEFAULT_GRID))))

    def cell_plan(self, name: str, lr: float, seed: int) -> dict[str, Any]:
        """What a cell's result depends on; a stored cell is reused only when this matches."""
        return {"optimizer": name, "lr": lr, "seed": seed, "split_seed": self.split_seed,
                **self.train.to_dict()}  # fmt: skip


def cell_name(name: str, lr: float, seed: int) -> str:
    return f"{name}_lr{lr:g}_seed{seed}"


class CellStore:
    """Finished cells under ``root/cells``, one JSON file each: ``{"plan": ..., "result": ...}``."""

    def __init__(self, root: str | Path) -> None:
        self.dir = Path(root) / "cells"

    def path(self, name: str, lr: float, seed: int) -> Path:
        return self.dir / f"{cell_name(name, lr, seed)}.json"

    def load(self, plan: dict[str, Any]) -> dict[str, Any] | None:
        """The stored result of the cell ``plan`` describes, or ``None`` when it must be trained
        (missing, unreadable, or stored under other settings; the reason is logged)."""
        path = self.path(plan["optimizer"], plan["lr"], plan["seed"])
        if not path.exists():
            return None
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            ok = isinstance(stored, dict) and "result" in stored and "plan" in stored
        except (OSError, ValueError):
            ok = False
        if not ok:
            logger.warning("%s is damaged or incomplete; training that cell again", path)
            return None
        if stored["plan"] != json.loads(json.dumps(plan)):
            logger.info("%s was trained under other settings; training it again", path)
            return None
        return stored["result"]

    def save(self, plan: dict[str, Any], result: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(plan["optimizer"], plan["lr"], plan["seed"])
        write_text_atomic(path, json.dumps({"plan": plan, "result": result}, indent=1) + "\n")


def select_lr(val_losses: dict[float, float]) -> tuple[float, bool]:
    """The learning rate with the lowest final validation loss (ties: the smaller rate) and
    whether it lies on the grid's edge (then a wider grid might do better).

    Non-finite losses (diverged runs) never win; if every run diverged this raises, naming the
    grid and the fix.
    """
    finite = {lr: v for lr, v in val_losses.items() if math.isfinite(v)}
    if not finite:
        raise ValueError(
            f"every learning rate diverged ({', '.join(f'{lr:g}' for lr in sorted(val_losses))}); "
            "give a grid of smaller learning rates"
        )
    best = min(finite, key=lambda lr: (finite[lr], lr))
    grid = sorted(val_losses)
    return best, len(grid) > 1 and best in (grid[0], grid[-1])


Event = Callable[[str], None]


def run_study(
    s: StudySettings, out: str | Path, *, reuse: bool = True, on_event: Event | None = None
) -> dict[str, Any]:
    """Run (or resume) the study in ``out``; returns the results dict written to
    ``out/results.json`` (also writes ``results.md`` and ``curves.png``)."""
    from nestlearn.studies.vit_optim.report import write_report

    say = on_event or (lambda msg: logger.info("%s", msg))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = digits_tensors(seed=s.split_seed)
    store = CellStore(out)
    n_cells = sum(len(s.grid(n)) + s.seeds - 1 for n in s.optimizers)
    done = [0]

    def cell(name: str, lr: float, seed: int) -> dict[str, Any]:
        plan = s.cell_plan(name, lr, seed)
        res = store.load(plan) if reuse else None
        done[0] += 1
        tag = f"[{done[0]}/{n_cells}] {name} lr {lr:g} seed {seed}"
        if res is not None:
            say(f"{tag}: reused ({_brief(res)})")
            return res
        res = train_cell(data, name, lr, seed, s.train)
        store.save(plan, res)
        say(f"{tag}: {_brief(res)}, {res['wall_s']:.0f} s")
        return res

    per_opt: dict[str, Any] = {}
    for name in s.optimizers:
        grid_runs = {lr: cell(name, lr, 0) for lr in s.grid(name)}
        chosen, edge = select_lr({lr: r["final"]["val_loss"] for lr, r in grid_runs.items()})
        runs = [grid_runs[chosen]] + [cell(name, chosen, k) for k in range(1, s.seeds)]
        per_opt[name] = {"grid": list(grid_runs.values()), "lr": chosen, "lr_on_edge": edge,
                         "runs": runs}  # fmt: skip
        say(f"{name}: lr {chosen:g} chosen on validation loss" + (" (grid edge)" if edge else ""))
    timing = _timing(s, out, data, reuse, say)
    results = {"settings": _settings_dict(s), "data": _data_info(data),
               "optimizers": per_opt, "timing": timing}  # fmt: skip
    write_report(results, out)
    return results


def _timing(s: StudySettings, out: Path, data, reuse: bool, say: Event) -> list[dict[str, Any]]:  # noqa: ANN001
    if s.timing_steps == 0:
        return []
    path = out / "timing.json"
    # the training settings first: their own "steps" must not hide the timed rounds
    plan = {**s.train.to_dict(), "optimizers": list(s.optimizers),
            "widths": list(s.timing_widths), "timing_steps": s.timing_steps}  # fmt: skip
    if reuse and path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("plan") == json.loads(json.dumps(plan)):
                say("timing: reused")
                return stored["timing"]
        except (OSError, ValueError, AttributeError):
            logger.warning("%s is damaged; timing again", path)
    rows = []
    x, y = data.x_train[: s.train.batch_size], data.y_train[: s.train.batch_size]
    for w in s.timing_widths:
        vit = replace(s.train.vit, dim=w)
        row = time_optimizer_steps(vit, list(s.optimizers), s.train, steps=s.timing_steps,
                                   batch=x, labels=y)  # fmt: skip
        ms = ", ".join(f"{n} {t:.2f} ms" for n, t in row["step_ms"].items())
        say(
            f"timing width {w}: optimizer.step() median {ms}; forward+backward {row['fwd_bwd_ms']:.1f} ms"
        )
        rows.append(row)
    write_text_atomic(path, json.dumps({"plan": plan, "timing": rows}, indent=1) + "\n")
    return rows


def _brief(res: dict[str, Any]) -> str:
    f = res["final"]
    if res.get("diverged") is not None:
        return f"diverged at step {res['diverged']}"
    return (f"val loss {f['val_loss']:.4f}, test loss {f['test_loss']:.4f}, "
            f"test acc {100 * f['test_acc']:.1f}%")  # fmt: skip


def _settings_dict(s: StudySettings) -> dict[str, Any]:
    return {"optimizers": list(s.optimizers), "grids": {n: list(s.grid(n)) for n in s.optimizers},
            "seeds": s.seeds, "split_seed": s.split_seed, "timing_widths": list(s.timing_widths),
            "timing_steps": s.timing_steps, "train": s.train.to_dict()}  # fmt: skip


def _data_info(data) -> dict[str, int]:  # noqa: ANN001
    return {"train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test)}
