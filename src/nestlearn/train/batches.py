"""Training batches: stateless, seeded sampling of token windows.

The batch of optimizer step ``s`` is a pure function of ``(seed, s)``: window starts come
from ``numpy.random.default_rng([seed, s])``. Resuming therefore needs only the step
number, a resumed run sees exactly the batches the uninterrupted run saw, and rank ``r`` of
``W`` takes rows ``r::W`` of the global batch, so any world size sees the same global batch.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from nestlearn.data.ids import check_ids


class TokenSource(Protocol):
    """Anything that serves a long token stream: a prepared folder, the corpus, an array."""

    def __len__(self) -> int: ...

    def get(self, start: int, length: int) -> np.ndarray: ...


class ArrayTokens:
    """A :class:`TokenSource` over an in-memory array (tests, small experiments)."""

    def __init__(self, tokens: np.ndarray | list[int], n_bytes: int | None = None) -> None:
        self.tokens = np.asarray(tokens)
        self.n_bytes = int(n_bytes if n_bytes is not None else len(self.tokens))

    def __len__(self) -> int:
        return len(self.tokens)

    def get(self, start: int, length: int) -> np.ndarray:
        return self.tokens[start : start + length]


class SliceTokens:
    """A contiguous view ``[lo, hi)`` of another source (e.g. a held-out tail)."""

    def __init__(self, base: TokenSource, lo: int, hi: int) -> None:
        if not 0 <= lo < hi <= len(base):
            raise ValueError(f"bad slice [{lo}, {hi}) of a source of {len(base)} tokens")
        self.base, self.lo, self.hi = base, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def get(self, start: int, length: int) -> np.ndarray:
        length = min(length, self.hi - self.lo - start)
        return self.base.get(self.lo + start, length)


def batch_starts(n_tokens: int, seq_len: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Window starts of the global batch of step ``step``: ``[batch_size]`` int64."""
    span = n_tokens - seq_len - 1
    if span <= 0:
        raise ValueError(
            f"the training data has {n_tokens} tokens, fewer than data.seq_len+1={seq_len + 1}; "
            "use more data or a shorter data.seq_len"
        )
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, span + 1, size=batch_size, dtype=np.int64)


def make_batch(
    source: TokenSource, starts: np.ndarray, seq_len: int, vocab_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, both ``[len(starts), seq_len]`` int64.

    With ``vocab_size`` every id is checked to lie in ``[0, vocab_size)`` (on the CPU, before
    the batch reaches the model); see :func:`check_ids`.
    """
    rows = np.stack([np.asarray(source.get(int(s), seq_len + 1), dtype=np.int64) for s in starts])
    if vocab_size is not None:
        check_ids(rows, vocab_size, source)
    t = torch.from_numpy(rows)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()
