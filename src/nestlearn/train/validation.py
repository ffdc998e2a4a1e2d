"""Perplexity and bits-per-byte of a language model over a token stream.

bits-per-byte = (sum of next-token losses in nats) / (ln 2 x UTF-8 bytes those target tokens
decode to), which makes models with different tokenizers comparable.

This scorer lives in ``train`` because the trainer's periodic validation runs it and ``train``
imports nothing from ``eval`` (the two are sibling floors); ``nestlearn eval`` and the studies
call it from here too.
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

from nestlearn.data.ids import check_ids


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

    Raises:
        ValueError: a non-positive ``seq_len``, ``batch_size`` or ``max_tokens``; ids outside
            the model's vocabulary; or no token scored at all (the source is shorter than
            ``seq_len + 1``): a loss of 0 over nothing is never reported.
    """
    if seq_len <= 0 or batch_size <= 0 or max_tokens <= 0:
        raise ValueError(
            f"seq_len, batch_size and max_tokens must be positive, got {seq_len}, "
            f"{batch_size}, {max_tokens}"
        )
    vocab = getattr(getattr(model, "cfg", None), "vocab_size", None)
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
        batch = np.stack(rows)
        if vocab is not None:
            check_ids(batch, vocab, source)
        t = torch.from_numpy(batch).to(device)
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
    if totals[1] == 0:
        raise ValueError(
            f"no token was scored: the data holds {len(source)} tokens, fewer than the "
            f"{seq_len + 1} of one window (seq_len + 1); use longer data or a shorter seq_len"
        )
    loss = (totals[0] / totals[1]).item()
    bpb = (totals[0] / (math.log(2) * totals[2])).item() if totals[2] > 0 else float("nan")
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bpb": bpb, "tokens": int(totals[1])}
