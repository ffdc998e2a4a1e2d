"""Accuracy of a model on a synthetic token task (MQAR, MAD): the scorer of the recipes.

Scores a model it is given; training the model is :mod:`nestlearn.studies.recall`.
A task is a list of :class:`~nestlearn.data.synthetic.common.TokenSegment` whose targets are
``IGNORE_INDEX`` except at scored positions; accuracy is the argmax hit rate there.
``AutoencoderReadout`` is the decoder of MAD's memorization task (it reads the final hidden
state back into the whole sequence), so a model trained with one is scored through it.

Axis legend: B batch, T time, D model width, V vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nestlearn.data.synthetic.common import IGNORE_INDEX, TokenSegment
from nestlearn.models import LanguageModel


def count_correct(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """``(correct, scored)`` of argmax predictions at positions with a target."""
    mask = targets != IGNORE_INDEX
    hits = (logits.argmax(-1) == targets) & mask
    return int(hits.sum()), int(mask.sum())


def sincos_positions(n: int, dim: int) -> torch.Tensor:
    """``[n, dim]`` sinusoidal position code (Vaswani et al. 2017), as MAD's decoder uses."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    out = torch.zeros(n, dim)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out


class AutoencoderReadout(nn.Module):
    """MAD's compression decoder: ``h [B, D]`` (last position) -> logits ``[B, T, V]``.

    ``norm -> Linear -> GELU -> norm -> Linear -> GELU`` applied to ``h + pos[t]`` for every
    output position ``t``, then ``norm -> Linear(V)``.
    """

    def __init__(self, dim: int, vocab_size: int, max_len: int) -> None:
        super().__init__()
        self.register_buffer("pos", sincos_positions(max_len, dim), persistent=False)
        self.decoder = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim),
            nn.GELU(),
            nn.LayerNorm(dim),
            nn.Linear(dim, dim),
            nn.GELU(),
            nn.LayerNorm(dim),
            nn.Linear(dim, vocab_size),
        )

    def forward(self, h: torch.Tensor, length: int) -> torch.Tensor:
        return self.decoder(h[:, None, :] + self.pos[:length].to(h.dtype))


def final_hidden(model: LanguageModel, idx: torch.Tensor) -> torch.Tensor:
    """Normalised hidden states ``[B, T, D]`` (the input of the LM head) for ``idx [B, T]``."""
    captured: dict[str, torch.Tensor] = {}
    hook = model.norm.register_forward_hook(lambda m, i, o: captured.__setitem__("h", o))
    try:
        model(idx)
    finally:
        hook.remove()
    return captured["h"]


@torch.no_grad()
def evaluate_token_task(
    model: LanguageModel,
    segments: list[TokenSegment],
    *,
    readout: AutoencoderReadout | None = None,
    batch_size: int = 128,
    max_examples: int | None = None,
) -> tuple[float, dict[str, float]]:
    """Accuracy over all scored positions of ``segments`` and per segment."""
    was = model.training
    model.eval()
    total_c = total_n = 0
    per: dict[str, float] = {}
    try:
        for seg in segments:
            n = len(seg) if max_examples is None else min(len(seg), max_examples)
            c = s = 0
            for i in range(0, n, batch_size):
                x = torch.from_numpy(seg.inputs[i : min(n, i + batch_size)])
                y = torch.from_numpy(seg.targets[i : min(n, i + batch_size)])
                logits = task_logits(model, readout, x)
                dc, ds = count_correct(logits, y)
                c, s = c + dc, s + ds
            per[seg.name] = c / s if s else float("nan")
            total_c, total_n = total_c + c, total_n + s
    finally:
        model.train(was)
    return (total_c / total_n if total_n else float("nan")), per


def task_logits(
    model: LanguageModel, readout: AutoencoderReadout | None, x: torch.Tensor
) -> torch.Tensor:
    """Logits ``[B, T, V]`` of ``x [B, T]``: the LM head's, or ``readout``'s from the last
    position's hidden state when the task is read out through a decoder."""
    if readout is None:
        return model(x)[0]
    return readout(final_hidden(model, x)[:, -1], x.shape[1])
