"""Score a model on S-NIAH samples read in windows with its state threaded through.

A sample is right when the argmax at every value position is the value token (teacher-forced,
which equals greedy decoding of the whole value); token accuracy is recorded beside it.
Training the model and the tables of a study are :mod:`nestlearn.studies.sniah`.

Axis legend: B batch, T time, V vocabulary, N answer tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from nestlearn.data.synthetic.common import IGNORE_INDEX, TokenSegment
from nestlearn.models import LanguageModel


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
    """``(correct [N] bool, token accuracy)`` of ``seg``'s samples, read in ``chunk`` windows.

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
