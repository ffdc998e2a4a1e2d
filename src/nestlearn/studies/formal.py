"""Train a small model on a formal language and report Bin0 / Bin1 recognition accuracy.

The protocol of the Nested Learning paper's Table 5 (via Irie et al. 2023 and Bhattamishra et
al. 2020; see :mod:`nestlearn.data.synthetic.formal`): after every prefix the model predicts
the set of symbols that may follow (and whether the prefix may end), one sigmoid per output
symbol trained with binary cross-entropy on the real (non-padding) positions. A test string is
recognised when every position's thresholded set is exactly right; Bin0 holds strings of the
training lengths, Bin1 longer ones.

The model is any registered family built by :func:`nestlearn.studies.recall.recipe_model` with the
language's input vocabulary (alphabet, ``<bos>``, ``<pad>``); its first ``|alphabet| + 1``
output logits are read as the set predictions. Bhattamishra et al. train on 10,000 strings and
test on bins of a few hundred to 2,000; the CPU defaults here are 10,000 training strings and
500 per test bin.

Model selection and stopping follow both sources: they train for many epochs (Bhattamishra et
al. up to 25-100, Irie et al. up to 300), evaluate both bins after each epoch, keep the best
checkpoint (Irie et al.: by the mean of the Bin0 and Bin1 accuracies) and stop once both are
100 %. Here every ``cfg.eval_every`` steps the model is scored on *validation* draws of both
length ranges (``valid_bin0``, ``valid_bin1``: separate random streams, so the test bins are
never used to select), the best state by their mean is kept, training stops when both are
100 %, and the test bins are scored with the kept state. ``cfg.steps`` is the cap (and the
length of the cosine schedule). ``eval_every=0`` scores the final state instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nestlearn.data.synthetic.formal import (
    FORMAL_BINS,
    FORMAL_LANGUAGES,
    FormalBatch,
    encode_formal,
    formal_strings,
    formal_vocab,
)
from nestlearn.eval.formal import string_accuracy
from nestlearn.studies.recall import RecipeConfig, default_recipe, fit, recipe_model

logger = logging.getLogger(__name__)


@dataclass
class FormalResult:
    """Bin0/Bin1 string accuracy (fraction recognised) of one run, plus its training curve."""

    language: str
    family: str
    bin0: float
    bin1: float
    losses: list[float]
    steps: int
    params: int
    wall_time_s: float
    config: dict
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def set_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the set predictions on real positions.

    ``logits: [B, T, >=K]`` (the first ``K`` are used), ``targets: [B, T, K]``, ``mask: [B, T]``.
    """
    k = targets.shape[-1]
    per = F.binary_cross_entropy_with_logits(logits[..., :k].float(), targets, reduction="none")
    m = mask[..., None].to(per.dtype)
    return (per * m).sum() / (m.sum() * k)


def _batches(data: FormalBatch, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, ...]]:
    rng = np.random.default_rng(seed)
    x, y, m = (torch.from_numpy(a) for a in (data.inputs, data.targets, data.mask))
    while True:
        rows = rng.integers(0, len(data.strings), size=batch_size)
        width = int(m[rows].sum(-1).max())  # trim padding beyond the longest string drawn
        idx = torch.from_numpy(rows)
        yield x[idx, :width], y[idx, :width], m[idx, :width]


def train_formal(
    language: str,
    cfg: RecipeConfig | None = None,
    *,
    num_train: int = 10_000,
    num_test: int = 500,
    num_valid: int = 200,
    data_seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> FormalResult:
    """Train a fresh ``cfg.family`` model on ``language`` and score Bin0 and Bin1.

    With ``cfg.eval_every > 0`` the state kept is the best on ``num_valid`` validation strings
    per length range, and training stops early once it recognises all of them (module
    docstring); ``FormalResult.steps`` is the number of steps actually taken, and ``extra``
    holds ``valid_history`` (``[step, valid Bin0, valid Bin1]`` rows) and ``best_step``.
    """
    if language not in FORMAL_LANGUAGES:
        raise ValueError(
            f"unknown language {language!r}; choose from {', '.join(FORMAL_LANGUAGES)}"
        )
    cfg = cfg or default_recipe(language)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()

    def strings(split: str, num: int) -> FormalBatch:
        return encode_formal(language, formal_strings(language, num, split=split, seed=data_seed))

    train, bin0, bin1 = (
        strings("train", num_train),
        strings("bin0", num_test),
        strings("bin1", num_test),
    )
    valid = [strings("valid_bin0", num_valid), strings("valid_bin1", num_valid)]
    longest = max(a.inputs.shape[1] for a in (train, bin0, bin1, *valid))
    torch.manual_seed(cfg.seed)
    model = recipe_model(cfg, len(formal_vocab(language)), longest)

    def loss_fn(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return set_loss(model(x)[0], y, m)

    history: list[list[float]] = []
    best: dict[str, Any] = {"score": -1.0, "step": 0, "state": None}

    def evaluate() -> float:
        v0, v1 = (string_accuracy(model, v, cfg.eval_batch_size) for v in valid)
        score = (v0 + v1) / 2  # Irie et al.'s checkpoint criterion
        history.append([(len(history) + 1) * cfg.eval_every, v0, v1])
        if score > best["score"]:
            state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            best.update(score=score, step=history[-1][0], state=state)
        return score

    losses, _ = fit(
        model,
        _batches(train, cfg.batch_size, cfg.seed),
        loss_fn,
        cfg,
        evaluate=evaluate,
        progress=progress,
        stop=lambda score: score >= 1.0,
    )
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    b0 = string_accuracy(model, bin0, cfg.eval_batch_size)
    b1 = string_accuracy(model, bin1, cfg.eval_batch_size)
    logger.info(
        "%s / %s: Bin0 %.3f, Bin1 %.3f (state of step %d of %d)",
        language, cfg.family, b0, b1, best["step"] or len(losses), len(losses),
    )  # fmt: skip
    return FormalResult(
        language=language,
        family=cfg.family,
        bin0=b0,
        bin1=b1,
        losses=losses,
        steps=len(losses),
        params=model.num_params(),
        wall_time_s=time.perf_counter() - t0,
        config={
            "recipe": asdict(cfg),
            "bins": FORMAL_BINS[language],
            "num_train": num_train,
            "num_test": num_test,
            "num_valid": num_valid,
            "data_seed": data_seed,
        },
        extra={"valid_history": history, "best_step": best["step"] or len(losses)},
    )
