"""Train a small model on a synthetic S-NIAH task at a short length; test it at longer ones.

The small-scale analogue of the long-context chart (arXiv 2512.24695 Table 1; Titans Table 2):
see :mod:`nestlearn.data.synthetic.sniah` for the tasks. A fresh model of any registered family
(:func:`nestlearn.eval.recall.recipe_model`) is trained with the shared loop
(:func:`nestlearn.eval.recall.fit`) on fresh 512-token samples, the loss only on the answer's
value symbols, then scored on held-out samples at every test length.

**Streaming.** Test sequences are read in windows of ``chunk`` tokens (default: the training
length) with the model's per-sequence state threaded from one window to the next, so no model
ever takes more than the training length in one call: recurrent families carry their memory
(Titans' and Hope's memory weights, Mamba2's SSM state, TTT's inner weights), and the
transformer carries its KV cache, i.e. it attends to the whole context, at positions beyond the
512 it was trained on (RoPE), as the paper's Transformers are read at their full context. Every
family obeys "one call == chunk-aligned windows with the state threaded", so at the training
length this is the plain forward pass.

**Score.** A sample is right when the argmax at every value position is the value symbol
(teacher-forced, which equals greedy decoding of the whole value); a cell is the fraction of
samples right. Symbol accuracy is recorded beside it.

Axis legend: B batch, T time, V vocabulary, N answer symbols.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from nestlearn.data.synthetic.common import IGNORE_INDEX, TokenSegment
from nestlearn.data.synthetic.sniah import (
    SNIAH_TASKS,
    sniah_batches,
    sniah_segment,
    sniah_vocab_size,
)
from nestlearn.eval.recall import (
    RecipeConfig,
    default_recipe,
    fit,
    masked_cross_entropy,
    recipe_model,
)
from nestlearn.models import LanguageModel

logger = logging.getLogger(__name__)

TRAIN_LENGTH = 512
"""Training length of the recipe (tokens)."""

TEST_LENGTHS: tuple[int, ...] = (512, 2048, 8192)
"""Test lengths: the training length, 4x and 16x it."""


@dataclass
class SNIAHResult:
    """One (task, family) run: per test length, the fraction of samples whose whole value is
    right (``accuracy``) and of value symbols right (``symbol_accuracy``)."""

    task: str
    family: str
    accuracy: dict[int, float]
    symbol_accuracy: dict[int, float]
    records: list[dict]
    """One per test sample: ``length``, ``depth`` (percent), ``correct`` (0/1)."""
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


@torch.no_grad()
def answer_logits(
    model: LanguageModel, inputs: torch.Tensor, first: int, chunk: int
) -> torch.Tensor:
    """Logits ``[B, T - first, V]`` at positions ``first ..`` of ``inputs [B, T]``, reading
    the sequence in windows of ``chunk`` tokens with the model's state threaded through."""
    if chunk <= 0:
        raise ValueError(f"chunk must be a positive number of tokens, got {chunk}")
    state = model.init_state(inputs.shape[0], device=inputs.device)
    kept = []
    for i in range(0, inputs.shape[1], chunk):
        logits, state = model(inputs[:, i : i + chunk], state=state)
        if i + chunk > first:
            kept.append(logits[:, max(first - i, 0) :])
    return torch.cat(kept, dim=1)


@torch.no_grad()
def score_segment(
    model: LanguageModel, seg: TokenSegment, *, chunk: int, batch_size: int = 16
) -> tuple[np.ndarray, float]:
    """``(correct [N] bool, symbol accuracy)`` of ``seg``'s samples, read in ``chunk`` windows.

    Every sample of a segment has its answer at the same positions (the last ``N``).
    """
    scored = np.flatnonzero((seg.targets != IGNORE_INDEX).any(0))
    if len(scored) == 0:
        raise ValueError(f"segment {seg.name!r} has no scored position")
    first = int(scored[0])
    was = model.training
    model.eval()
    correct: list[np.ndarray] = []
    hits = total = 0
    try:
        for i in range(0, len(seg), batch_size):
            x = torch.from_numpy(seg.inputs[i : i + batch_size])
            y = torch.from_numpy(seg.targets[i : i + batch_size, first:])
            pred = answer_logits(model, x, first, chunk).argmax(-1)
            ok = (pred == y) | (y == IGNORE_INDEX)
            correct.append(ok.all(-1).numpy())
            mask = y != IGNORE_INDEX
            hits += int((ok & mask).sum())
            total += int(mask.sum())
    finally:
        model.train(was)
    return np.concatenate(correct), hits / total


def _torch_batches(
    it: Iterator[tuple[np.ndarray, np.ndarray]],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in it:
        yield torch.from_numpy(x), torch.from_numpy(y)


def train_sniah(
    task: str,
    cfg: RecipeConfig | None = None,
    *,
    train_length: int = TRAIN_LENGTH,
    test_lengths: Sequence[int] = TEST_LENGTHS,
    num_test: int = 100,
    chunk: int | None = None,
    data_seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> SNIAHResult:
    """Train a fresh ``cfg.family`` model on ``task`` at ``train_length`` tokens and score
    ``num_test`` held-out samples at each of ``test_lengths``, streamed in windows of ``chunk``
    tokens (default ``train_length``), at most 16 sequences at a time (``cfg.eval_batch_size``
    if smaller): an 8K-token KV cache or attention window stays a few hundred MB."""
    if task not in SNIAH_TASKS:
        raise ValueError(f"unknown S-NIAH task {task!r}; choose from {', '.join(SNIAH_TASKS)}")
    if num_test <= 0 or not test_lengths:
        raise ValueError(f"need num_test > 0 and test lengths, got {num_test} and {test_lengths}")
    cfg = cfg or default_recipe(task)
    chunk = chunk or train_length
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = recipe_model(cfg, sniah_vocab_size(), max(train_length, *test_lengths))

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return masked_cross_entropy(model(x)[0], y)

    batches = sniah_batches(task, train_length, cfg.batch_size, seed=data_seed + cfg.seed)
    losses, _ = fit(model, _torch_batches(batches), loss_fn, cfg, progress=progress)
    t1 = time.perf_counter()
    acc: dict[int, float] = {}
    sym: dict[int, float] = {}
    records: list[dict] = []
    for length in test_lengths:
        seg = sniah_segment(task, length, num_test, split="test", seed=data_seed)
        ok, sym[length] = score_segment(
            model, seg, chunk=chunk, batch_size=min(cfg.eval_batch_size, 16)
        )
        acc[length] = float(ok.mean())
        records += [
            {"length": length, "depth": d, "correct": int(c)}
            for d, c in zip(seg.meta["depths"], ok)
        ]
        logger.info("%s / %s @ %d: %.1f%%", task, cfg.family, length, 100 * acc[length])
    t2 = time.perf_counter()
    return SNIAHResult(
        task=task,
        family=cfg.family,
        accuracy=acc,
        symbol_accuracy=sym,
        records=records,
        losses=losses,
        steps=cfg.steps,
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
            "data_seed": data_seed,
        },
    )
