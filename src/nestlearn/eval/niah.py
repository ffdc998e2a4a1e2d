"""Score a model on RULER-style needle-in-a-haystack tasks: greedy answers, string match, reports.

RULER's metric for the niah tasks (Hsieh et al. 2024): the model's greedy continuation of the
prompt (up to 128 tokens, stopped at end-of-text) is cleaned of control characters, and a
sample scores the fraction of its expected values that occur in it, case-insensitively
(``string_match_all``); a cell's score is the mean over its samples, in percent.

Long prompts are prefilled in chunks with the model's state threaded through (every layer
obeys "one call == chunk-aligned segments with the state threaded"), so a 64K-token prompt
never materialises a 64K x 64K attention matrix; decoding then continues from that state with
:func:`nestlearn.models.generation.generate`. Families that cannot decode with a state
(``supports_decode=False``) recompute the whole context for every new token instead.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from nestlearn.data.synthetic.niah import NIAH_TASKS, TOKENS_TO_GENERATE, generate_niah
from nestlearn.data.tokenizers import Tokenizer
from nestlearn.models import FAMILIES, LanguageModel
from nestlearn.models.generation import generate
from nestlearn.utils.figures import write_figure
from nestlearn.utils.tables import format_table

logger = logging.getLogger(__name__)

HEATMAP_DEPTHS: tuple[float, ...] = tuple(float(d) for d in range(0, 101, 10))
"""Depth rows of the S-NIAH heat map (percent); samples are binned to the nearest."""


class PromptSample(Protocol):
    """What answer generation needs of a sample (NIAH and BABILong samples both qualify)."""

    input_ids: np.ndarray
    max_new_tokens: int


def clean_prediction(text: str) -> str:
    """RULER's post-processing: strip, and turn control characters into newlines."""
    return re.sub(r"[\x00-\x1f]", "\n", text.strip())


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Fraction of ``references`` found in ``prediction`` (case-insensitive), in [0, 1]."""
    if not references:
        raise ValueError("a sample needs at least one reference answer")
    pred = prediction.lower()
    return sum(ref.lower() in pred for ref in references) / len(references)


@torch.no_grad()
def prefill(model: LanguageModel, idx: torch.Tensor, chunk: int) -> Any:
    """Run ``idx [B, T]`` through ``model`` in chunks of ``chunk`` tokens; return the state."""
    state = model.init_state(idx.shape[0], device=idx.device)
    for i in range(0, idx.shape[1], chunk):
        _, state = model(idx[:, i : i + chunk], state=state)
    return state


@torch.no_grad()
def generate_answers(
    model: LanguageModel,
    tokenizer: Tokenizer,
    samples: Sequence[PromptSample],
    *,
    batch_size: int = 4,
    use_state: bool | None = None,
    prefill_chunk: int = 2048,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy continuation of every sample's ``input_ids`` (up to its ``max_new_tokens``).

    Samples of equal prompt length and budget are batched (no padding, so no attention mask is
    needed); generation of a batch stops when all rows produced end-of-text. Returns the decoded
    continuations, cut at the first end-of-text, in the order of ``samples``.
    """
    if use_state is None:
        use_state = FAMILIES[model.cfg.family].supports_decode
    device = next(model.parameters()).device
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[(len(s.input_ids), s.max_new_tokens)].append(i)
    out: list[str] = [""] * len(samples)
    eos = tokenizer.eos_id
    for (length, budget), members in groups.items():
        for b in range(0, len(members), batch_size):
            rows = members[b : b + batch_size]
            idx = torch.as_tensor(np.stack([samples[i].input_ids for i in rows]), device=device)
            if use_state and length > 1:
                state = prefill(model, idx[:, :-1], prefill_chunk)
                tokens, _ = generate(
                    model, idx[:, -1:], budget, temperature=0.0, eos_id=eos, state=state
                )
                new = tokens[:, 1:]
            else:
                tokens, _ = generate(
                    model, idx, budget, temperature=0.0, eos_id=eos, use_state=use_state
                )
                new = tokens[:, length:]
            for r, i in enumerate(rows):
                ids = new[r].tolist()
                if eos is not None and eos in ids:
                    ids = ids[: ids.index(eos)]
                out[i] = tokenizer.decode(ids)
            if progress is not None:
                progress(len(rows))
    return out


def evaluate_niah(
    model: LanguageModel,
    tokenizer: Tokenizer,
    tasks: Sequence[str],
    lengths: Sequence[int],
    num_samples: int,
    *,
    seed: int = 0,
    split: str = "test",
    depths: Sequence[float] | None = HEATMAP_DEPTHS,
    max_new_tokens: int = TOKENS_TO_GENERATE,
    batch_size: int = 4,
    use_state: bool | None = None,
    prefill_chunk: int = 2048,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """One record per sample: task, length, index, depth, answers, prediction, score (0..1).

    ``depths`` defaults to the heat-map grid (0, 10, ..., 100 percent), cycled over the samples
    of single-needle tasks; pass None for RULER's random depths.
    """
    bad = [t for t in tasks if t not in NIAH_TASKS]
    if bad:
        raise ValueError(f"unknown NIAH tasks {bad}; choose from {', '.join(NIAH_TASKS)}")

    def make(task: str, length: int) -> list:
        return generate_niah(
            task, tokenizer, length, num_samples, seed=seed, split=split, depths=depths,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip

    def record(s: Any, p: str) -> dict:
        clean = clean_prediction(p)
        return {
            "index": s.index,
            "depth": s.depth,
            "token_depth": s.needles[0].token_depth,
            "answers": s.answers,
            "prediction": clean,
            "score": string_match_all(clean, s.answers),
        }

    return answer_cells(
        model, tokenizer, tasks, lengths, make, record, "score", logger, batch_size=batch_size,
        use_state=use_state, prefill_chunk=prefill_chunk, progress=progress,
    )  # fmt: skip


def answer_cells(
    model: LanguageModel,
    tokenizer: Tokenizer,
    tasks: Sequence[str],
    lengths: Sequence[int],
    make: Callable[[str, int], Sequence[PromptSample]],
    record: Callable[[Any, str], dict],
    key: str,
    log: logging.Logger,
    **answer_kw: Any,
) -> list[dict]:
    """The cell loop of :func:`evaluate_niah` and ``evaluate_babilong``: for every task and
    length, ``make(task, length)`` the samples, answer them (:func:`generate_answers` with
    ``answer_kw``) and keep ``{"task", "length", **record(sample, prediction)}`` per sample;
    each cell's mean ``key`` is logged on ``log``."""
    records: list[dict] = []
    for task in tasks:
        for length in lengths:
            samples = make(task, length)
            preds = generate_answers(model, tokenizer, samples, **answer_kw)
            for s, p in zip(samples, preds):
                records.append({"task": task, "length": length, **record(s, p)})
            cell = [r[key] for r in records[-len(samples) :]]
            log.info("%s @ %d: %.1f%%", task, length, 100 * float(np.mean(cell)))
    return records


def summarize(records: Sequence[dict], key: str = "score") -> dict[str, dict[int, float]]:
    """Mean of ``record[key]`` in percent per ``task`` and ``length`` (NIAH and BABILong)."""
    cells: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        cells[r["task"]][int(r["length"])].append(r[key])
    return {
        t: {n: 100.0 * float(np.mean(v)) for n, v in sorted(c.items())} for t, c in cells.items()
    }


def cell_table(
    records: Sequence[dict],
    key: str,
    what: str,
    titles: dict[str, str] | None = None,
    zero_label: str = "0",
) -> str:
    """Text table of :func:`summarize`: a row per task, a column per length, then a note
    saying ``what`` the percentages are and how many samples each cell holds."""
    summary = summarize(records, key)
    lengths = sorted({n for c in summary.values() for n in c})
    counts: dict[tuple[str, int], int] = defaultdict(int)
    for r in records:
        counts[(r["task"], int(r["length"]))] += 1
    rows = [
        [(titles or {}).get(task, task), *[cells.get(n, float("nan")) for n in lengths]]
        for task, cells in summary.items()
    ]
    header = [zero_label if n == 0 else length_label(n) for n in lengths]
    n_per = ", ".join(map(str, sorted(set(counts.values()))))
    return (
        f"{format_table(['task', *header], rows)}\n({what} in percent; samples per cell: {n_per})"
    )


def niah_table(records: Sequence[dict]) -> str:
    """A text table: one row per task, one column per length, scores in percent."""
    titles = {name: t.title for name, t in NIAH_TASKS.items()}
    return cell_table(records, "score", "string-match recall", titles)


def write_results(out: Path, records: Sequence[dict], summary: dict, table: str) -> None:
    """``records.jsonl`` (a line per sample), ``summary.json`` and ``table.txt`` in ``out``."""
    with (out / "records.jsonl").open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out / "table.txt").write_text(table + "\n", encoding="utf-8")


def length_label(n: int) -> str:
    """``4096`` -> ``"4K"``; other counts as they are."""
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def depth_grid(records: Sequence[dict], task: str) -> tuple[list[float], list[int], np.ndarray]:
    """``(depths, lengths, mean score [depths, lengths])`` of one task, depths binned to
    :data:`HEATMAP_DEPTHS` (NaN where a cell has no sample)."""
    rows = [r for r in records if r["task"] == task]
    lengths = sorted({int(r["length"]) for r in rows})
    grid = np.array(HEATMAP_DEPTHS)
    sums = np.zeros((len(grid), len(lengths)))
    counts = np.zeros_like(sums)
    for r in rows:
        d = int(np.abs(grid - float(r["depth"])).argmin())
        j = lengths.index(int(r["length"]))
        sums[d, j] += r["score"]
        counts[d, j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, 100.0 * sums / np.maximum(counts, 1), np.nan)
    return list(grid), lengths, mean


def plot_niah_heatmap(records: Sequence[dict], out: str | Path, title: str = "") -> Path | None:
    """Depth x length heat maps of the single-needle tasks found in ``records`` (one panel each).

    Returns the PNG path, or None when there is no S-NIAH record.
    """
    tasks = [
        t for t in ("s_niah_1", "s_niah_2", "s_niah_3") if any(r["task"] == t for r in records)
    ]
    if not tasks:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(tasks), figsize=(4.2 * len(tasks) + 1, 4.4), dpi=120, squeeze=False
    )
    image = None
    for ax, task in zip(axes[0], tasks):
        depths, lengths, mean = depth_grid(records, task)
        image = ax.imshow(mean, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_xticks(range(len(lengths)), [length_label(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0f}%" for d in depths])
        ax.set_xlabel("context length (tokens)")
        if ax is axes[0][0]:
            ax.set_ylabel("needle depth")
        ax.set_title(NIAH_TASKS[task].title)
        for (i, j), v in np.ndenumerate(mean):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), label="string-match recall (%)", shrink=0.85)
    if title:
        fig.suptitle(title)
    return write_figure(fig, out, bbox_inches="tight")
