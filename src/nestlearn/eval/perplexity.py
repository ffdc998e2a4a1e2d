"""Perplexity and bits-per-byte of a language model over a token stream.

bits-per-byte = (sum of next-token losses in nats) / (ln 2 x UTF-8 bytes those target tokens
decode to), which makes models with different tokenizers comparable.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def token_byte_lengths(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """UTF-8 byte length of every token id, ``[vocab_size]`` float64 (specials count 0).

    Uses ``tokenizer.token_byte_lengths()`` when the tokenizer provides it; otherwise
    decodes each id alone (exact for byte-level vocabularies).
    """
    fn = getattr(tokenizer, "token_byte_lengths", None)
    if fn is not None:
        lengths = torch.as_tensor(np.asarray(fn(), dtype=np.float64))
    else:
        lengths = torch.tensor(
            [len(tokenizer.decode([i]).encode("utf-8")) for i in range(tokenizer.vocab_size)],
            dtype=torch.float64,
        )
    out = torch.zeros(vocab_size, dtype=torch.float64)
    n = min(vocab_size, len(lengths))
    out[:n] = lengths[:n]
    return out


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    source: Any,
    *,
    seq_len: int,
    batch_size: int,
    max_tokens: int,
    token_bytes: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    rank: int = 0,
    world_size: int = 1,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Mean loss, perplexity and bits-per-byte over contiguous windows of ``source``.

    Windows of ``seq_len + 1`` tokens tile the start of ``source`` (no overlap) until
    ``max_tokens`` targets are scored; rank ``r`` scores windows ``r::world_size`` and
    ``reduce`` (an all-reduce sum) combines the totals.
    Returns ``{"loss", "ppl", "bpb", "tokens"}`` (``bpb`` is NaN without ``token_bytes``).
    """
    was_training = model.training
    model.eval()
    n_windows = max(1, min(max_tokens // seq_len, (len(source) - 1) // seq_len))
    mine = list(range(rank, n_windows, world_size))
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, token count, byte count
    ctx = autocast or contextlib.nullcontext
    for i in range(0, len(mine), batch_size):
        rows = [
            np.asarray(source.get(w * seq_len, seq_len + 1), dtype=np.int64)
            for w in mine[i : i + batch_size]
        ]
        rows = [r for r in rows if len(r) == seq_len + 1]
        if not rows:
            continue
        t = torch.from_numpy(np.stack(rows)).to(device)
        x, y = t[:, :-1], t[:, 1:]
        with ctx():
            logits, _ = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        totals[0] += loss.double().cpu()
        totals[1] += y.numel()
        if token_bytes is not None:
            totals[2] += token_bytes[y.flatten().cpu()].sum()
    if reduce is not None:
        totals = reduce(totals)
    if was_training:
        model.train()
    loss = (totals[0] / totals[1].clamp(min=1)).item()
    bpb = (totals[0] / (math.log(2) * totals[2])).item() if totals[2] > 0 else float("nan")
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bpb": bpb, "tokens": int(totals[1])}
