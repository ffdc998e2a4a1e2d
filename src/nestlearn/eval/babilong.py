"""Score a model on BABILong-style samples (Kuratov et al. 2024): greedy answer, label match.

An answer is correct when it names the expected label and no other label of the task (BABILong's
rule: labels are every answer that occurs in the task's file, and labels that appear in the
question itself are not held against the model). Only the first non-empty line of the
continuation is read, and labels match as whole words, case-insensitively.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nestlearn.data.synthetic.babilong import ANSWER_TOKENS, BABI_TASKS, generate_babilong
from nestlearn.data.tokenizers import Tokenizer
from nestlearn.eval.niah import answer_cells, cell_table, length_label, summarize
from nestlearn.models import LanguageModel
from nestlearn.utils.figures import write_figure

logger = logging.getLogger(__name__)


def _mentions(text: str, label: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(label.lower())}(?![\w-])", text) is not None


def babilong_correct(prediction: str, answer: str, question: str, labels: Sequence[str]) -> bool:
    """Whether ``prediction`` names ``answer`` and no other task label (see the module doc)."""
    lines = [ln.strip() for ln in prediction.lower().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    q = question.lower()
    others = [lab for lab in labels if lab.lower() != answer.lower() and not _mentions(q, lab)]
    return _mentions(first, answer) and not any(_mentions(first, lab) for lab in others)


def evaluate_babilong(
    model: LanguageModel,
    tokenizer: Tokenizer,
    tasks: Sequence[str],
    lengths: Sequence[int],
    num_samples: int,
    *,
    seed: int = 0,
    split: str = "test",
    babi_dir: str | Path | None = None,
    max_new_tokens: int = ANSWER_TOKENS,
    batch_size: int = 4,
    use_state: bool | None = None,
    prefill_chunk: int = 2048,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """One record per sample: task, length, index, story, line, answer, prediction, correct."""
    bad = [t for t in tasks if t not in BABI_TASKS]
    if bad:
        raise ValueError(f"unknown BABILong tasks {bad}; choose from {', '.join(BABI_TASKS)}")

    def make(task: str, length: int) -> list:
        return generate_babilong(
            task, tokenizer, length, num_samples, seed=seed, split=split,
            max_new_tokens=max_new_tokens, babi_dir=babi_dir,
        )  # fmt: skip

    def record(s: Any, p: str) -> dict:
        return {
            "index": s.index,
            "story": s.story,
            "line": s.line,
            "question": s.question,
            "answer": s.answer,
            "prediction": p,
            "correct": float(babilong_correct(p, s.answer, s.question, s.labels)),
            "fact_depths": [f.token_depth for f in s.facts],
            "skipped": s.meta.get("skipped", 0),
        }

    return answer_cells(
        model, tokenizer, tasks, lengths, make, record, "correct", logger, batch_size=batch_size,
        use_state=use_state, prefill_chunk=prefill_chunk, progress=progress,
    )  # fmt: skip


def babilong_summary(records: Sequence[dict]) -> dict[str, dict[int, float]]:
    """Accuracy in percent per task and length."""
    return summarize(records, "correct")


def babilong_table(records: Sequence[dict]) -> str:
    """Text table, one row per task and one column per length (accuracy in percent)."""
    return cell_table(records, "correct", "accuracy", zero_label="0 (facts only)")


def plot_babilong(records: Sequence[dict], out: str | Path, title: str = "") -> Path:
    """Accuracy against length, one line per task (BABILong's Fig. 9 layout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = babilong_summary(records)
    lengths = sorted({n for c in summary.values() for n in c})
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for task, cells in summary.items():
        xs = sorted(cells)
        ax.plot([lengths.index(n) for n in xs], [cells[n] for n in xs], "o-", label=task)
    ax.set_xticks(range(len(lengths)), ["0" if n == 0 else length_label(n) for n in lengths])
    ax.set_xlabel("input length (tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "BABILong")
    fig.tight_layout()
    return write_figure(fig, out)
