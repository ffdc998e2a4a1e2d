"""Zero-shot evaluation without lm-eval: task readers, lm-eval prompt formats, a batched scorer.

Entry points: :func:`evaluate_tasks` (``{task: metrics}``), :class:`LMScorer` (log-likelihood,
rolling log-likelihood, greedy generation), :data:`TASKS` (the eight shipped tasks),
:func:`paper_row` / :func:`format_paper_table` (the layout of arXiv 2512.24695 Table 2).
See docs/evaluation.md.
"""

from nestlearn.eval.zeroshot.readers import DATA_DIR_ENV, DataDirError, resolve_data_dir
from nestlearn.eval.zeroshot.run import (
    PAPER_COLUMNS,
    choice_metrics,
    evaluate_tasks,
    format_paper_table,
    paper_row,
    score_items,
)
from nestlearn.eval.zeroshot.scorer import LMScorer, rolling_windows, set_memory_updates
from nestlearn.eval.zeroshot.specs import PAPER_ORDER, TASKS, TaskSpec, parse_task_list

__all__ = [
    "DATA_DIR_ENV",
    "PAPER_COLUMNS",
    "PAPER_ORDER",
    "TASKS",
    "DataDirError",
    "LMScorer",
    "TaskSpec",
    "choice_metrics",
    "evaluate_tasks",
    "format_paper_table",
    "paper_row",
    "parse_task_list",
    "resolve_data_dir",
    "rolling_windows",
    "score_items",
    "set_memory_updates",
]
