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


DOC_BOUNDARIES = ("eos", "reset")
IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index


class BatchSampler:
    """The rows of every step's global batch, and the tensors of any subset of them.

    A row is ``(source index, window start)``: with one source the starts are
    :func:`batch_starts` (as before mixtures existed), with a
    :class:`~nestlearn.data.mixture.Mixture` they come from :meth:`Mixture.rows`. Either way a
    step's rows are a pure function of ``(seed, step)``.

    ``doc_boundary``:

    * ``eos``: windows run across documents (an eos id between them); attention and memory see
      the previous document's tail.
    * ``reset``: each row holds one document only. Its targets stop at the first eos (the eos is
      the last target); later inputs become ``pad_id`` and later targets ``IGNORE_INDEX``, so
      nothing of the next document is read and, every family being causal, neither attention
      nor per-sequence memory carries from one document into the next (every row starts from a
      fresh state). A row starting on an eos is a document start (the eos acts as its bos).

    With ``vocab_size`` every id of a batch is checked to lie in ``[0, vocab_size)`` (on the CPU,
    before the batch reaches the model; the message names the source), as :func:`make_batch`.
    """

    def __init__(
        self,
        data: TokenSource,
        seq_len: int,
        batch_size: int,
        seed: int,
        doc_boundary: str = "eos",
        eos_id: int | None = None,
        pad_id: int | None = None,
        vocab_size: int | None = None,
    ) -> None:
        if doc_boundary not in DOC_BOUNDARIES:
            raise ValueError(f"data.doc_boundary must be eos or reset, got {doc_boundary!r}")
        if doc_boundary == "reset" and eos_id is None:
            raise ValueError("data.doc_boundary=reset needs the tokenizer's eos id")
        self.data, self.seq_len, self.batch_size, self.seed = data, seq_len, batch_size, seed
        self.reset = doc_boundary == "reset"
        self.eos_id = eos_id
        self.pad_id = eos_id if pad_id is None else pad_id
        self.vocab_size = vocab_size
        self.sources: list[TokenSource] = list(getattr(data, "sources", [data]))
        self._mixture = hasattr(data, "rows") and hasattr(data, "sources")

    def rows(self, step: int) -> np.ndarray:
        """``[batch_size, 2]`` int64 (source, start) of step ``step``'s global batch."""
        if self._mixture:
            return self.data.rows(self.seed, step, self.batch_size, self.seq_len)  # type: ignore[attr-defined]
        starts = batch_starts(len(self.data), self.seq_len, self.batch_size, self.seed, step)
        return np.stack([np.zeros_like(starts), starts], axis=1)

    def make(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of ``rows``, both ``[len(rows), seq_len]`` int64."""
        T = self.seq_len
        windows = np.stack(
            [np.asarray(self.sources[int(k)].get(int(s), T + 1), dtype=np.int64) for k, s in rows]
        ) if len(rows) else np.empty((0, T + 1), dtype=np.int64)  # fmt: skip
        if self.vocab_size is not None and len(rows):
            which = np.asarray(rows)[:, 0]
            for k in np.unique(which):  # per source, so that the message names the right one
                check_ids(windows[which == k], self.vocab_size, self.sources[int(k)])
        t = torch.from_numpy(windows)
        x, y = t[:, :-1].contiguous(), t[:, 1:].contiguous()
        if self.reset and len(rows):
            x, y = x.clone(), y.clone()  # one row's slices are views of the same window
            is_eos = y == self.eos_id
            # first eos among the targets (T when none): targets after it belong to the next document
            first = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(y[:, 0], T))
            pos = torch.arange(T).unsqueeze(0)
            after = pos > first.unsqueeze(1)
            y[after] = IGNORE_INDEX
            x[after] = self.pad_id
        return x, y
