"""The levels experiment end to end: cells, resume, ``results.md``, ``results.json``, plot.

A *cell* is one (task, length, levels, lowest period) setting, or a task's ``in context``
reference. Each finished cell is written atomically to ``OUT/cells/<key>.json`` with the
settings it ran under and the model's name; a later run with the same settings reuses it, so a
stopped run resumes at the first missing cell. After every cell ``results.json``,
``results.md`` and ``levels.png`` are rewritten (atomically) from all finished cells.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nestlearn.studies.levels import (
    LevelsConfig,
    build_items,
    cell_key,
    run_cell,
    settings_of,
)

logger = logging.getLogger(__name__)

__all__ = ["answer_prob", "plan_cells", "run_levels", "write_results"]

TITLES = {"longhealth": "LongHealth-style records", "mk_niah": "MK-NIAH-1"}


def plan_cells(cfg: LevelsConfig) -> list[tuple[str, int, int, int | None, str]]:
    """Every cell ``(task, length, levels, period, mode)`` in run order: per task and length,
    the in-context reference, ICL, then each period's levels from fewest to most."""
    cells: list[tuple[str, int, int, int | None, str]] = []
    for task in cfg.tasks:
        lengths = [cfg.doc_length] if task == "longhealth" else list(cfg.niah_lengths)
        for n in lengths:
            if cfg.in_context:
                cells.append((task, n, 0, None, "context"))
            if 0 in cfg.levels:
                cells.append((task, n, 0, None, "window"))
            for p in cfg.periods:
                for k in sorted(k for k in cfg.levels if k > 0):
                    cells.append((task, n, k, p, "window"))
    return cells


def _read_cell(path: Path, want: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable cell %s (%s); it is run again", path, e)
        return None
    return old if old.get("run") == want else None


def run_levels(
    out: str | Path,
    load: Callable[[], tuple[Any, Any]],
    cfg: LevelsConfig,
    *,
    model_name: str,
    progress: Callable[[str], None] | None = None,
    report_only: bool = False,
) -> dict[str, Any]:
    """Run every cell of :func:`plan_cells` not already finished in ``out``.

    Args:
        out: output folder (created).
        load: returns ``(model, tokenizer)``; called only if a cell must run (a finished
            folder is re-reported without loading the model).
        cfg: sizes and settings.
        model_name: recorded with each cell; a cell from another model is run again.
        progress: called with one line per step.
        report_only: run no cell; report the finished ones (a partial grid) and list the rest.
    """
    say = progress or (lambda s: logger.info("%s", s))
    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cells = plan_cells(cfg)
    done: list[dict[str, Any]] = []
    loaded: tuple[Any, Any] | None = None
    items: dict[tuple[str, int], list] = {}
    for i, (task, n, k, p, mode) in enumerate(cells):
        key = cell_key(task, n, k, p, mode)
        path = out / "cells" / f"{key}.json"
        want = {"model": model_name, **settings_of(cfg, task, k, mode)}
        old = _read_cell(path, want)
        if old is not None:
            say(f"[{i + 1}/{len(cells)}] {key}: reusing ({100 * old['accuracy']:.1f}%)")
            done.append(old)
            continue
        if report_only:
            say(f"[{i + 1}/{len(cells)}] {key}: not finished (report only)")
            continue
        if loaded is None:
            say(f"loading {model_name}")
            loaded = load()
        model, tok = loaded
        if (task, n) not in items:
            num = cfg.num_docs if task == "longhealth" else cfg.num_niah
            items[(task, n)] = build_items(tok, task, n, num, seed=cfg.seed,
                                           num_questions=cfg.num_questions)  # fmt: skip
        say(f"[{i + 1}/{len(cells)}] {key}: running")
        res = run_cell(model, items[(task, n)], k, p, cfg, mode=mode, progress=say)
        res.update(task=task, length=n, key=key, run=want)
        from nestlearn.data.prepare import atomic_write_json

        atomic_write_json(path, res)
        say(f"[{i + 1}/{len(cells)}] {key}: {100 * res['accuracy']:.1f}% of "
            f"{res['n_questions']} questions in {res['wall_time_s']:.0f} s")  # fmt: skip
        done.append(res)
        write_results(out, done, cfg, model_name)
    summary = write_results(out, done, cfg, model_name)
    say(f"done in {time.perf_counter() - t0:.0f} s: {out / 'results.md'}")
    return summary


def answer_prob(cell: dict[str, Any]) -> float:
    """Mean over questions of the right option's probability when the four options'
    likelihoods are normalised against each other (softmax of the log-likelihoods): a finer
    measure than accuracy on few questions (chance 0.25)."""
    probs = []
    for q in cell["questions"]:
        ll = q["loglik"]
        top = max(ll)
        w = [math.exp(x - top) for x in ll]
        probs.append(w[q["answer"]] / sum(w))
    return sum(probs) / len(probs) if probs else float("nan")


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def write_results(out: Path, cells: list[dict[str, Any]], cfg: LevelsConfig,
                  model_name: str) -> dict[str, Any]:  # fmt: skip
    """Write ``results.json``, ``results.md`` and ``levels.png`` from finished ``cells``."""
    from dataclasses import asdict

    from nestlearn.data.prepare import atomic_write_bytes, atomic_write_json

    summary = {
        "model": model_name,
        "config": asdict(cfg),
        "cells": [
            {**{k: v for k, v in c.items() if k != "questions"}, "answer_prob": answer_prob(c)}
            for c in cells
        ],
        "questions": {c["key"]: c["questions"] for c in cells},
        "wall_time_s": sum(c["wall_time_s"] for c in cells),
    }
    atomic_write_json(out / "results.json", summary)
    atomic_write_bytes(out / "results.md", render_md(cells, cfg, model_name).encode("utf-8"))
    try:
        plot_levels(cells, cfg, out / "levels.png")
    except ImportError:  # matplotlib is optional
        logger.warning("matplotlib is not installed: no levels.png")
    return summary


def _groups(cells: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    g: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for c in cells:
        g.setdefault((c["task"], c["length"]), []).append(c)
    return g


def render_md(cells: list[dict[str, Any]], cfg: LevelsConfig, model_name: str) -> str:
    """The accuracy-against-levels tables, one per task and length."""
    md = [
        "# Effect of levels (arXiv 2512.24695 §9.1, Fig. 7 analogue)", "",
        f"Model {model_name}; attention window {cfg.window} tokens while reading, questions "
        f"asked with the document out of the window; level lr {cfg.level_lr}, level period "
        f"ratio {cfg.ratio}, seed {cfg.seed}. Accuracy in % (4 options: chance 25%), in brackets "
        "the answer probability (below).", "",
    ]  # fmt: skip
    for (task, n), cs in _groups(cells).items():
        ctx = next((c for c in cs if c["mode"] == "context"), None)
        win = [c for c in cs if c["mode"] == "window"]
        nq = max((c["n_questions"] for c in cs), default=0)
        md += [f"## {TITLES.get(task, task)}, {n} tokens ({nq} questions)", ""]
        periods = [p for p in cfg.periods if any(c["period"] == p for c in win)]
        heads = [f"lowest period {p}" for p in periods] or ["ICL"]
        md.append("| levels | " + " | ".join(heads) + " |")
        md.append("|---|" + "--:|" * len(heads))

        def show(c: dict[str, Any] | None) -> str:
            return "" if c is None else f"{_pct(c['accuracy'])} ({answer_prob(c):.2f})"

        for k in sorted({c["levels"] for c in win}):
            if k == 0:
                c0 = next(c for c in win if c["levels"] == 0)
                md.append("| 0 (ICL) | " + " | ".join([show(c0)] * len(heads)) + " |")
                continue
            row = [show(next((c for c in win if c["levels"] == k and c["period"] == p), None))
                   for p in periods]  # fmt: skip
            md.append(f"| {k} | " + " | ".join(row) + " |")
        if ctx is not None:
            md += ["", f"In context (whole document in attention, nothing learns): "
                   f"{_pct(ctx['accuracy'])}%."]  # fmt: skip
        md += ["", "| cell | periods of the blocks | accuracy | answer prob. | reading loss | "
               "wall time |", "|---|---|--:|--:|--:|--:|"]  # fmt: skip
        for c in sorted(cs, key=lambda c: (c["mode"] == "window", c["period"] or 0, c["levels"])):
            name = ("in context" if c["mode"] == "context" else
                    "0 (ICL)" if c["levels"] == 0 else
                    f"{c['levels']} level{'s' if c['levels'] > 1 else ''}, P={c['period']}")  # fmt: skip
            loss = "" if c.get("reading_loss") is None else f"{c['reading_loss']:.3f}"
            per = "/".join(str(p) for p in c["periods"]) or "-"
            md.append(f"| {name} | {per} | {_pct(c['accuracy'])} | {answer_prob(c):.3f} | {loss} | "
                      f"{c['wall_time_s']:.0f} s |")  # fmt: skip
        md += ["", "Reading loss: mean next-token loss (nats) of the document while it was read "
               "in windows (levels learning); lower than ICL's = the levels learned it. Answer prob.: "
               "the right option's mean probability with the four options' likelihoods "
               "normalised against each other (chance 0.25).", ""]  # fmt: skip
        kinds: dict[str, list[bool]] = {}
        for c in win:
            for q in c["questions"]:
                kinds.setdefault(q["kind"], []).append(q["correct"])
        if len(kinds) > 1:
            md.append(
                "Accuracy by question kind over all window cells: "
                + ", ".join(f"{k} {100 * sum(v) / len(v):.0f}%" for k, v in sorted(kinds.items()))
                + "."
            )
            md.append("")
    md.append(f"Wall time of the cells: {sum(c['wall_time_s'] for c in cells):.0f} s.")
    return "\n".join(md) + "\n"


def plot_levels(cells: list[dict[str, Any]], cfg: LevelsConfig, path: Path) -> Path:
    """Accuracy (top) and answer probability (bottom) against levels, one panel per task and
    length, one line per lowest period."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nestlearn.data.prepare import atomic_write_bytes

    groups = _groups(cells)
    cols = max(1, len(groups))
    fig, axes = plt.subplots(2, cols, figsize=(4 * cols, 6.4), squeeze=False)
    metrics = (("accuracy (%)", lambda c: 100 * c["accuracy"]),
               ("answer probability (%)", lambda c: 100 * answer_prob(c)))  # fmt: skip
    for row, (label, value) in enumerate(metrics):
        for ax, ((task, n), cs) in zip(axes[row], groups.items()):
            win = [c for c in cs if c["mode"] == "window"]
            c0 = next((c for c in win if c["levels"] == 0), None)
            for p in cfg.periods:
                pts = sorted((c["levels"], value(c)) for c in win if c["period"] == p)
                if c0 is not None:
                    pts = [(0, value(c0)), *pts]
                if pts:
                    ax.plot([x for x, _ in pts], [y for _, y in pts], "o-",
                            label=f"lowest period {p}")  # fmt: skip
            ctx = next((c for c in cs if c["mode"] == "context"), None)
            if ctx is not None:
                ax.axhline(value(ctx), color="k", ls="--", lw=1, label="in context")
            ax.axhline(25, color="grey", ls=":", lw=1, label="chance")
            ax.set_title(f"{TITLES.get(task, task)}, {n} tokens", fontsize=9)
            ax.set_xlabel("stacked levels (0 = ICL)")
            ax.set_ylabel(label)
            ax.set_ylim(-2, 102)
            ax.set_xticks(sorted({c["levels"] for c in win} | {0}))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
