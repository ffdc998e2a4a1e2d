"""``nestlearn eval --tasks``: zero-shot tasks of the paper's Table 2 on a checkpoint.

``nestlearn eval --checkpoint RUN --tasks piqa,arc_easy --data-dir DIR [--limit N]
[--freeze-memory] [--batch-size B] [--json]`` scores the tasks with the native scorer
(:mod:`nestlearn.eval.zeroshot`, no lm-eval needed) and prints the paper's column layout.
``--tasks all`` runs the eight shipped tasks. The data folder is ``--data-dir`` or
``$NESTLEARN_DATA_DIR`` (layout in :mod:`nestlearn.eval.zeroshot.readers`).

Backend: native by default; ``lm-eval`` (through :mod:`nestlearn.studies.lm_eval_adapter`) when
``args.backend`` or ``$NESTLEARN_EVAL_BACKEND`` says so. Both give the same numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

logger = logging.getLogger(__name__)

BACKEND_ENV = "NESTLEARN_EVAL_BACKEND"
BACKENDS = ("native", "lm-eval")


def _backend(args: argparse.Namespace) -> str:
    name = (getattr(args, "backend", None) or os.environ.get(BACKEND_ENV) or "native").lower()
    name = {"lm_eval": "lm-eval", "lmeval": "lm-eval"}.get(name, name)
    if name not in BACKENDS:
        raise ValueError(f"unknown evaluation backend {name!r}; choose one of {BACKENDS}")
    return name


def run_tasks(args: argparse.Namespace) -> int:
    """Entry point of ``nestlearn eval --tasks ...`` (called by ``nestlearn.cli``)."""
    from nestlearn.eval.zeroshot import (
        LMScorer,
        evaluate_tasks,
        format_paper_table,
        paper_row,
        parse_task_list,
        resolve_data_dir,
        set_memory_updates,
    )
    from nestlearn.train.run import load_run

    tasks = parse_task_list(args.tasks)
    data_dir = resolve_data_dir(getattr(args, "data_dir", None))
    limit = getattr(args, "limit", None)
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    batch_size = int(getattr(args, "batch_size", None) or 16)
    freeze = bool(getattr(args, "freeze_memory", False))
    backend = _backend(args)
    if backend == "lm-eval":
        try:
            from nestlearn.studies.lm_eval_adapter import evaluate_with_lm_eval
        except ImportError as e:
            raise ValueError(str(e)) from None

    run = load_run(args.checkpoint)
    t0 = time.perf_counter()
    if backend == "lm-eval":
        results = evaluate_with_lm_eval(
            tasks,
            data_dir,
            model=run.model,
            tokenizer=run.tokenizer,
            limit=limit,
            batch_size=batch_size,
            freeze_memory=freeze,
        )
    else:
        switched = set_memory_updates(run.model, not freeze)
        if freeze and not switched:
            logger.warning("--freeze-memory: %s has no test-time memory", run.cfg.model.family)
        scorer = LMScorer(
            run.model, run.tokenizer, batch_size=batch_size, progress=sys.stderr.isatty()
        )
        results = evaluate_tasks(scorer, tasks, data_dir, limit=limit)
    wall = time.perf_counter() - t0
    label = f"{run.checkpoint.parent.parent.name}@{run.step}" + (" (frozen)" if freeze else "")
    row = paper_row(results)
    if getattr(args, "json", False):
        record: dict[str, Any] = {
            "checkpoint": str(run.checkpoint),
            "step": run.step,
            "family": run.cfg.model.family,
            "params": run.model.num_params(),
            "backend": backend,
            "data_dir": str(data_dir),
            "limit": limit,
            "freeze_memory": freeze,
            "max_length": run.cfg.model.max_seq_len,
            "wall_time_s": round(wall, 2),
            "tasks": results,
            "paper_columns": row,
        }
        print(json.dumps(record))
        return 0
    print(format_paper_table({label: row}))
    shown = ", ".join(f"{t} n={results[t]['n']}" for t in tasks)
    print(
        f"\nbackend {backend}; {shown}; accuracies in %, Avg over the accuracy columns run "
        f"(the paper averages 8 incl. HellaSwag, not shipped); {wall:.0f}s"
    )
    return 0
