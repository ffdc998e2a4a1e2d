"""Perplexity over one token stream with the per-sequence state threaded through.

:func:`nestlearn.train.validation.evaluate_lm` scores independent windows, each from a fresh
state, which is how a model is trained. A model that learns in context (Titans, Hope) can also
be read as one long stream: every window continues from the state the previous one left, so
the memory keeps learning over the whole text (``nestlearn eval --stream``), and the stream can
start from a state saved by an earlier call and hand its final state to the next one
(``--state-in`` / ``--state-out``).

The stream is ``tokens[0 : n + 1]`` with ``n = min(max_tokens, len(source) - 1)``: token ``0``
is context only (its prediction was made, if at all, by an earlier call), tokens ``1..n`` are
scored, ``seq_len`` inputs per forward call. The returned state has consumed every token of the
stream including the last, so a later call that starts with the text that follows continues
exactly. Batch size 1: one stream. With a KV-cache family (Transformer++) the cache grows over
the whole stream, so keep ``max_tokens`` modest there.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nestlearn.data.ids import check_ids
from nestlearn.models import ModelState


@torch.no_grad()
def evaluate_stream(
    model: nn.Module,
    source: object,
    *,
    seq_len: int,
    max_tokens: int,
    token_bytes: torch.Tensor | None = None,
    state: ModelState | None = None,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, float], ModelState]:
    """Mean loss, perplexity and bits-per-byte of one stream, and the state after it.

    Args:
        model: a :class:`~nestlearn.models.LanguageModel` whose family decodes with a state.
        source: a token source with ``len()`` and ``get(start, length) -> array`` (as
            :class:`~nestlearn.train.batches.ArrayTokens` or ``TokenShards``).
        seq_len: inputs per forward call (the memory sees them chunk by chunk either way).
        max_tokens: tokens to score.
        token_bytes: ``[V]`` UTF-8 bytes per token id (for bits-per-byte).
        state: continue this state (batch 1); ``None`` starts a fresh one.
    Returns:
        ``({"loss", "ppl", "bpb", "tokens"}, final_state)``.
    """
    if seq_len <= 0 or max_tokens <= 0:
        raise ValueError(f"seq_len and max_tokens must be positive, got {seq_len}, {max_tokens}")
    n = min(max_tokens, len(source) - 1)  # type: ignore[arg-type]
    if n <= 0:
        raise ValueError(
            f"no token can be scored: the stream holds {len(source)} token(s) and needs at "  # type: ignore[arg-type]
            "least 2 (one to read, one to predict); use longer data"
        )
    vocab = getattr(getattr(model, "cfg", None), "vocab_size", None)
    was_training = model.training
    model.eval()
    if state is None:
        state = model.init_state(1, device=torch.device(device))  # type: ignore[operator]
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, token count, byte count
    try:
        for start in range(0, n, seq_len):
            length = min(seq_len, n - start)
            row = np.asarray(source.get(start, length + 1), dtype=np.int64)  # type: ignore[attr-defined]
            if vocab is not None:
                check_ids(row, vocab, source)
            t = torch.from_numpy(row).to(device)[None]
            x, y = t[:, :-1], t[:, 1:]
            logits, state = model(x, state=state)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32
            totals[0] += F.cross_entropy(logits[0], y[0], reduction="sum").double().cpu()
            totals[1] += y.numel()
            if token_bytes is not None:
                totals[2] += token_bytes[y.flatten().cpu()].sum()
        # the last target has not been an input yet: feed it, so the state covers the stream
        _, state = model(t[:, -1:], state=state)
    finally:
        model.train(was_training)
    loss = (totals[0] / totals[1]).item()
    bpb = (totals[0] / (math.log(2) * totals[2])).item() if totals[2] > 0 else float("nan")
    ev = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bpb": bpb, "tokens": int(totals[1])}
    return ev, state
