"""Train a small model on the synthetic S-NIAH tasks at a short length; test it at longer ones.

The small-scale analogue of the long-context chart (arXiv 2512.24695 Table 1; Titans Table 2):
see :mod:`nestlearn.data.synthetic.sniah` for the tasks. A fresh model of any registered family
(:func:`nestlearn.studies.recall.recipe_model`) is trained with the shared loop
(:func:`nestlearn.studies.recall.fit`) on fresh 512-token samples of the tasks (one model for all
the tasks it is given, batches cycling through them, as the paper scores one language model on
every needle), then scored on held-out samples of each task at every test length.

**Loss** (:func:`sniah_loss`): the mean cross-entropy of the answer's value tokens plus the
language-modelling loss of every other position (``lm_weight`` times its mean). The paper's
models find needles with what language modelling taught them; here the repeated noise of
S-NIAH-1 and the key in the question make copying from far back pay at every length, which is
what lets a CPU-sized model learn the task: measured at 128 tokens with the three tasks mixed, a
2-layer width-64 transformer retrieved 53 / 47 % of S-NIAH-1 / 2 values after 600 steps with
``lm_weight=1``, while with the answer loss alone it had formed no retrieval after 1,000 steps
at 512 tokens (S-NIAH-1 only; about 0.4 CPU-s per step).

**Streaming.** Test sequences are read in windows of ``chunk`` tokens (default: the training
length) with the model's per-sequence state threaded from one window to the next, so no model
ever takes more than the training length in one call: recurrent families carry their memory
(Titans' and Hope's memory weights, Mamba2's SSM state, TTT's inner weights), and the
transformer carries its KV cache, i.e. it attends to the whole context, at positions beyond the
512 it was trained on (RoPE), as the paper's Transformers are read at their full context. Every
family obeys "one call == chunk-aligned windows with the state threaded", so at the training
length this is the plain forward pass.

**Score.** A sample is right when the argmax at every value position is the value token
(teacher-forced, which equals greedy decoding of the whole value); a cell is the fraction of
samples right. Token accuracy is recorded beside it.

Axis legend: B batch, T time, V vocabulary, N answer tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nestlearn.data.synthetic.common import IGNORE_INDEX
from nestlearn.data.synthetic.sniah import (
    SNIAH_TASKS,
    sniah_batches,
    sniah_segment,
    sniah_vocab_size,
)
from nestlearn.eval.sniah import score_segment
from nestlearn.studies.recall import RecipeConfig, default_recipe, fit, recipe_model
from nestlearn.utils.figures import write_figure

logger = logging.getLogger(__name__)

TRAIN_LENGTH = 512
"""Training length of the recipe (tokens)."""

TEST_LENGTHS: tuple[int, ...] = (512, 2048, 8192)
"""Test lengths: the training length, 4x and 16x it."""


@dataclass
class SNIAHResult:
    """One family's run: per task and test length, the fraction of samples whose whole value
    is right (``accuracy[task][length]``) and of value tokens right (``token_accuracy``)."""

    tasks: list[str]
    family: str
    accuracy: dict[str, dict[int, float]]
    token_accuracy: dict[str, dict[int, float]]
    records: list[dict]
    """One per test sample: ``task``, ``length``, ``depth`` (percent), ``correct`` (0/1)."""
    losses: list[float]
    steps: int
    params: int
    train_time_s: float
    eval_time_s: float
    wall_time_s: float
    config: dict
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def sniah_loss(
    logits: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, lm_weight: float
) -> torch.Tensor:
    """Answer cross-entropy plus ``lm_weight`` x the next-token loss of the other positions.

    ``logits: [B, T, V]``, ``inputs, targets: [B, T]`` (targets :data:`IGNORE_INDEX` except at
    the answer). The language-modelling target of position ``t < T-1`` is ``inputs[t+1]``;
    positions with an answer target are left out of that term. Each term is a mean over its
    positions; float32 whatever the logits' dtype.
    """
    flat = logits.float().reshape(-1, logits.shape[-1])
    answer = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX)
    if lm_weight == 0:
        return answer
    lm = torch.full_like(inputs, IGNORE_INDEX)
    lm[:, :-1] = inputs[:, 1:]
    lm[targets != IGNORE_INDEX] = IGNORE_INDEX
    return answer + lm_weight * F.cross_entropy(flat, lm.reshape(-1), ignore_index=IGNORE_INDEX)


def _torch_batches(
    it: Iterator[tuple[np.ndarray, np.ndarray]],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in it:
        yield torch.from_numpy(x), torch.from_numpy(y)


def train_sniah(
    tasks: str | Sequence[str],
    cfg: RecipeConfig | None = None,
    *,
    train_length: int = TRAIN_LENGTH,
    test_lengths: Sequence[int] = TEST_LENGTHS,
    num_test: int = 100,
    chunk: int | None = None,
    lm_weight: float = 1.0,
    data_seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> SNIAHResult:
    """Train one fresh ``cfg.family`` model on ``tasks`` (batches cycling through them) at
    ``train_length`` tokens with :func:`sniah_loss`, then score ``num_test`` held-out samples
    of each task at each of ``test_lengths``, streamed in windows of ``chunk`` tokens (default
    ``train_length``), at most 16 sequences at a time (``cfg.eval_batch_size`` if smaller): an
    8K-token KV cache or attention window stays a few hundred MB."""
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    bad = [t for t in tasks if t not in SNIAH_TASKS]
    if bad or not tasks:
        raise ValueError(
            f"unknown S-NIAH task {bad or tasks}; choose from {', '.join(SNIAH_TASKS)}"
        )
    if num_test <= 0 or not test_lengths:
        raise ValueError(f"need num_test > 0 and test lengths, got {num_test} and {test_lengths}")
    if lm_weight < 0:
        raise ValueError(f"lm_weight must be >= 0, got {lm_weight}")
    cfg = cfg or default_recipe(tasks[0])
    chunk = chunk or train_length
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = recipe_model(cfg, sniah_vocab_size(), max(train_length, *test_lengths))

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sniah_loss(model(x)[0], x, y, lm_weight)

    batches = sniah_batches(tasks, train_length, cfg.batch_size, seed=data_seed + cfg.seed)
    losses, _ = fit(model, _torch_batches(batches), loss_fn, cfg, progress=progress)
    t1 = time.perf_counter()
    acc: dict[str, dict[int, float]] = {}
    tok: dict[str, dict[int, float]] = {}
    records: list[dict] = []
    for task in tasks:
        acc[task], tok[task] = {}, {}
        for length in test_lengths:
            seg = sniah_segment(task, length, num_test, split="test", seed=data_seed)
            ok, tok[task][length] = score_segment(
                model, seg, chunk=chunk, batch_size=min(cfg.eval_batch_size, 16)
            )
            acc[task][length] = float(ok.mean())
            records += [
                {"task": task, "length": length, "depth": d, "correct": int(c)}
                for d, c in zip(seg.meta["depths"], ok)
            ]
            logger.info("%s / %s @ %d: %.1f%%", task, cfg.family, length, 100 * acc[task][length])
    t2 = time.perf_counter()
    return SNIAHResult(
        tasks=tasks,
        family=cfg.family,
        accuracy=acc,
        token_accuracy=tok,
        records=records,
        losses=losses,
        steps=len(losses),
        params=model.num_params(),
        train_time_s=t1 - t0,
        eval_time_s=t2 - t1,
        wall_time_s=t2 - t0,
        config={
            "recipe": asdict(cfg),
            "train_length": train_length,
            "test_lengths": list(test_lengths),
            "num_test": num_test,
            "chunk": chunk,
            "lm_weight": lm_weight,
            "data_seed": data_seed,
        },
    )


# ----------------------------------------------------------------- report helpers
SNIAH_FAMILIES: tuple[str, ...] = ("transformer", "titans", "hope", "ttt-mlp", "mamba2")
"""The families of the chart (Titans Table 2 compares Titans, TTT, Mamba2 and a Transformer)."""


def sniah_rows(
    tasks: Sequence[str],
    family: str,
    steps: int | None = None,
    train_length: int = TRAIN_LENGTH,
    test_lengths: Sequence[int] = TEST_LENGTHS,
    num_test: int = 100,
    seed: int = 0,
) -> list[dict]:
    """One family's run of the default recipe on ``tasks`` as JSON-able report rows, one per
    task: ``task``, ``lengths``, ``accuracy`` and ``token_accuracy`` (percent, one per length),
    ``params``, ``steps``, and the run's ``train_time_s`` / ``eval_time_s`` (on every row)."""
    cfg = default_recipe(tasks[0], family=family, steps=steps, seed=seed)
    res = train_sniah(
        tasks, cfg, train_length=train_length, test_lengths=test_lengths, num_test=num_test,
        data_seed=seed,
    )  # fmt: skip
    return [
        {
            "task": t,
            "lengths": list(test_lengths),
            "accuracy": [100 * res.accuracy[t][n] for n in test_lengths],
            "token_accuracy": [100 * res.token_accuracy[t][n] for n in test_lengths],
            "params": res.params,
            "steps": res.steps,
            "train_length": train_length,
            "final_loss": res.losses[-1],
            "train_time_s": res.train_time_s,
            "eval_time_s": res.eval_time_s,
        }
        for t in tasks
    ]


def sniah_stage(
    suite: Any, cache: Path, res: Any, out: Path, step: Callable[..., Any], say: Callable
) -> None:
    """``nestlearn reproduce``'s S-NIAH stage: each of ``suite.sniah_families`` trained on the
    ``suite.sniah_tasks`` (one model, cached per family and seed), a row per task into
    ``res.sniah``, the bar chart."""
    if not suite.sniah_tasks:
        return
    from nestlearn.studies.reproduce import stage_key

    say(f"[6/7] S-NIAH analogue {','.join(suite.sniah_tasks)} at {suite.sniah_lengths}")
    for fam in suite.sniah_families:
        for s in range(suite.synthetic_seeds):
            key = stage_key(cache, "sniah", f"{fam}-seed{s}", suite)
            v = step(
                "S-NIAH", f"{fam} S-NIAH", key, sniah_rows, list(suite.sniah_tasks), fam,
                suite.sniah_steps, suite.sniah_train_length, suite.sniah_lengths,
                suite.sniah_samples, s,
            )  # fmt: skip
            if isinstance(v, dict):  # an error (or not run): one entry for the family
                if "not_run" not in v:
                    res.sniah.append({"model": fam, "task": "all", "seed": s, **v})
                continue
            res.sniah += [{"model": fam, "seed": s, **row} for row in v]
    if plot_sniah_bars([r for r in res.sniah if "accuracy" in r], out / "sniah_bars.png"):
        res.plots["sniah"] = "sniah_bars.png"


def _cells(rows: Sequence[dict]) -> dict[tuple[str, str, int], list[float]]:
    """``(model, task, length) -> [accuracy % per seed]`` of report rows with results."""
    out: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        for n, a in zip(r.get("lengths", []), r.get("accuracy", [])):
            out.setdefault((r["model"], r["task"], int(n)), []).append(float(a))
    return out


def sniah_table(rows: Sequence[dict]) -> str:
    """Markdown: a row per family, a column per (task, test length); mean over seeds, in %."""
    from nestlearn.eval.niah import length_label
    from nestlearn.studies.report_md import mean_std
    from nestlearn.utils.tables import markdown_table

    cells = _cells(rows)
    models = list(dict.fromkeys(m for m, _, _ in cells))
    tasks = [t for t in SNIAH_TASKS if any(k[1] == t for k in cells)]
    lengths = sorted({n for _, _, n in cells})
    head = ["model"] + [
        f"{SNIAH_TASKS[t].title.split(' (')[0]} @{length_label(n)}" for t in tasks for n in lengths
    ]
    body = [
        [m, *[mean_std(cells.get((m, t, n), []), ".1f") for t in tasks for n in lengths]]
        for m in models
    ]
    return markdown_table(head, body)


def plot_sniah_bars(rows: Sequence[dict], out: str | Path, title: str = "") -> Path | None:
    """Bar chart: a panel per task, bar groups per test length, a bar per family (mean %)."""
    from nestlearn.eval.niah import length_label

    cells = _cells(rows)
    if not cells:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(m for m, _, _ in cells))
    tasks = [t for t in SNIAH_TASKS if any(k[1] == t for k in cells)]
    lengths = sorted({n for _, _, n in cells})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.4 * len(tasks), 3.6), dpi=120, squeeze=False)
    width = 0.8 / len(models)
    for ax, task in zip(axes[0], tasks):
        for i, m in enumerate(models):
            vals = [float(np.mean(cells.get((m, task, n), [np.nan]))) for n in lengths]
            xs = np.arange(len(lengths)) + (i - (len(models) - 1) / 2) * width
            ax.bar(xs, np.nan_to_num(vals), width, label=m)
        ax.set_xticks(range(len(lengths)), [length_label(n) for n in lengths])
        ax.set_ylim(0, 100)
        ax.set_title(SNIAH_TASKS[task].title)
        ax.set_xlabel("test length (tokens)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("needles retrieved (%)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title)
    return write_figure(fig, out, bbox_inches="tight")
