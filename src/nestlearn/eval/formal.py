"""Recognition accuracy of a model on a formal language (paper Table 5): the scorer.

A string is recognised when, after every prefix, the model's thresholded set prediction (logit
> 0 for each of the first ``K`` outputs) equals the target set on every real position.
Training the model is :mod:`nestlearn.studies.formal`.

Axis legend: B batch, T time, K set size (alphabet + end-of-string).
"""

from __future__ import annotations

import torch

from nestlearn.data.synthetic.formal import FormalBatch
from nestlearn.models import LanguageModel


def recognised(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: every real position's predicted set (logit > 0) equals its target set."""
    k = targets.shape[-1]
    right = (logits[..., :k] > 0) == (targets > 0.5)
    ok_pos = right.all(-1) | ~mask
    return ok_pos.all(-1)


@torch.no_grad()
def string_accuracy(model: LanguageModel, data: FormalBatch, batch_size: int = 128) -> float:
    """Fraction of ``data``'s strings recognised by ``model``."""
    was = model.training
    model.eval()
    ok = 0
    try:
        for i in range(0, len(data.strings), batch_size):
            sl = slice(i, i + batch_size)
            m = torch.from_numpy(data.mask[sl])
            width = int(m.sum(-1).max())
            x = torch.from_numpy(data.inputs[sl, :width])
            y = torch.from_numpy(data.targets[sl, :width])
            ok += int(recognised(model(x)[0], y, m[:, :width]).sum())
    finally:
        model.train(was)
    return ok / len(data.strings)
