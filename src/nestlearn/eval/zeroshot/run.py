"""Run zero-shot tasks with the native scorer and lay the results out as the paper does."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nestlearn.eval.zeroshot.scorer import LMScorer
from nestlearn.eval.zeroshot.specs import (
    TASKS,
    ChoiceItem,
    Item,
    RollingItem,
    TargetItem,
)

logger = logging.getLogger(__name__)

PAPER_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("Wiki ppl", "wikitext", "word_perplexity"),
    ("LMB ppl", "lambada_openai", "perplexity"),
    ("LMB acc", "lambada_openai", "acc"),
    ("PIQA acc", "piqa", "acc"),
    ("Hella acc_n", "hellaswag", "acc_norm"),
    ("Wino acc", "winogrande", "acc"),
    ("ARC-e acc", "arc_easy", "acc"),
    ("ARC-c acc_n", "arc_challenge", "acc_norm"),
    ("SIQA acc", "social_iqa", "acc"),
    ("BoolQ acc", "boolq", "acc"),
)
"""(column, task, metric) of arXiv 2512.24695 Table 2, in order; ``Avg`` follows.

The paper's ``Avg`` is the mean of its eight accuracy columns (e.g. Transformer++ 760M:
(37.1 + 67.2 + 43.8 + 53.0 + 65.6 + 33.4 + 39.1 + 61.7) / 8 = 50.11). HellaSwag is not
shipped, so our ``Avg`` is over the accuracy columns that were run (at most seven) and
is not directly comparable with the paper's.
"""


def _stderr(x: np.ndarray) -> float:
    # lm-eval's mean_stderr: sample standard deviation / sqrt(n)
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def choice_metrics(lls: Sequence[float], item: ChoiceItem) -> dict[str, float]:
    """``acc`` and ``acc_norm`` of one multiple-choice item from its choices' log-likelihoods.

    ``acc_norm`` divides each log-likelihood by the choice's length in characters (lm-eval);
    ties go to the first choice (``argmax``).
    """
    lls_arr = np.asarray(lls, dtype=np.float64)
    norm = lls_arr / np.asarray(item.choice_chars, dtype=np.float64)
    return {
        "acc": float(int(np.argmax(lls_arr)) == item.gold),
        "acc_norm": float(int(np.argmax(norm)) == item.gold),
    }


def score_items(
    scorer: LMScorer,
    kind: str,
    items: Sequence[Item],
    name: str = "task",
    metrics: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics of one task over ``items`` (see :mod:`nestlearn.eval.zeroshot.specs`).

    Multiple choice gives ``acc`` and ``acc_norm`` (each with ``_stderr``, lm-eval's sample
    standard error); ``metrics`` keeps only the named ones (and their stderr) plus ``n``.
    """
    out = _score_items(scorer, kind, items, name)
    if metrics is None:
        return out
    keep = set(metrics) | {f"{m}_stderr" for m in metrics} | {"n"}
    return {k: v for k, v in out.items() if k in keep}


def _score_items(scorer: LMScorer, kind: str, items: Sequence[Item], name: str) -> dict[str, Any]:
    if not items:
        raise ValueError(f"{name}: no examples to score")
    if kind == "multiple_choice":
        flat = [r for it in items for r in it.requests]  # type: ignore[union-attr]
        res = scorer.loglikelihood(flat, desc=name)
        accs, norms = [], []
        pos = 0
        for it in items:
            assert isinstance(it, ChoiceItem)
            n = len(it.requests)
            m = choice_metrics([ll for ll, _ in res[pos : pos + n]], it)
            pos += n
            accs.append(m["acc"])
            norms.append(m["acc_norm"])
        a, b = np.asarray(accs), np.asarray(norms)
        return {
            "acc": float(a.mean()),
            "acc_stderr": _stderr(a),
            "acc_norm": float(b.mean()),
            "acc_norm_stderr": _stderr(b),
            "n": len(items),
        }
    if kind == "loglikelihood":
        res = scorer.loglikelihood(
            [(it.context, it.target) for it in items if isinstance(it, TargetItem)], desc=name
        )
        lls = np.asarray([ll for ll, _ in res], dtype=np.float64)
        acc = np.asarray([float(g) for _, g in res])
        return {
            "perplexity": math.exp(-lls.mean()),
            "acc": float(acc.mean()),
            "acc_stderr": _stderr(acc),
            "n": len(items),
        }
    if kind == "loglikelihood_rolling":
        docs = [it for it in items if isinstance(it, RollingItem)]
        lls = scorer.loglikelihood_rolling([d.text for d in docs], desc=name)
        total = sum(lls)
        words = sum(d.words for d in docs)
        nbytes = sum(d.bytes for d in docs)
        return {
            "word_perplexity": math.exp(-total / words),
            "byte_perplexity": math.exp(-total / nbytes),
            "bits_per_byte": -total / nbytes / math.log(2),
            "n": len(docs),
        }
    raise ValueError(f"unknown task kind {kind!r}")


def evaluate_tasks(
    scorer: LMScorer,
    tasks: Sequence[str],
    data_dir: Path,
    *,
    limit: int | None = None,
) -> dict[str, dict[str, Any]]:
    """``{task: metrics}`` for canonical task names (see ``specs.parse_task_list``)."""
    results: dict[str, dict[str, Any]] = {}
    for name in tasks:
        spec = TASKS[name]
        t0 = time.perf_counter()
        items = spec.items(data_dir, limit)
        if limit is None and len(items) != spec.rows:
            logger.warning(
                "%s: read %d rows, the shipped file has %d; is %s a different copy?",
                name,
                len(items),
                spec.rows,
                data_dir,
            )
        results[name] = score_items(scorer, spec.kind, items, name, spec.metrics)
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
        logger.info("%s: %s", name, results[name])
    return results


def paper_row(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The paper's columns (accuracies in %, perplexities as is; None = not run) plus Avg."""
    row: dict[str, float | None] = {}
    accs = []
    for col, task, metric in PAPER_COLUMNS:
        val = results.get(task, {}).get(metric)
        if val is not None and metric.startswith("acc"):
            val = 100.0 * val
            accs.append(val)
        row[col] = val
    row["Avg"] = float(np.mean(accs)) if accs else None
    return row


def format_paper_table(rows: dict[str, dict[str, float | None]]) -> str:
    """Markdown-style table with one line per model label, in the paper's column layout."""
    from nestlearn.utils.tables import format_table

    headers = ["model"] + [c for c, _, _ in PAPER_COLUMNS] + ["Avg"]
    body = []
    for label, row in rows.items():
        cells: list[Any] = [label]
        for h in headers[1:]:
            v = row.get(h)
            cells.append("n/a" if v is None else f"{v:.2f}")
        body.append(cells)
    return format_table(headers, body)
