"""Source mixtures: several token streams sampled with fixed weights, deterministically.

``data.train`` names one source or a mixture, ``PATH[:WEIGHT],PATH[:WEIGHT],...``, where PATH is
a folder made by ``nestlearn prepare`` or ``corpus`` (the embedded corpus), for example::

    data.train=data/fineweb-edu:0.9,data/longdocs:0.1

Weights are normalised to sum to one; with no weights at all each source counts in proportion
to its tokens (as if the folders were concatenated). Each row of a training batch first draws
its source with these probabilities, then a window start uniformly inside that source, both
from ``numpy.random.default_rng([seed, step])``: a step's batch is a pure function of the seed
and the step, so a resumed run sees exactly the batches of the uninterrupted one.

No torch here: the trainer turns rows into tensors (``nestlearn.train.batches``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class TokenSource(Protocol):
    """Anything that serves a long token stream: a prepared folder, the corpus, an array."""

    def __len__(self) -> int: ...

    def get(self, start: int, length: int) -> np.ndarray: ...


@dataclass(frozen=True)
class MixtureEntry:
    """One part of a ``data.train`` spec: where the tokens are, their weight, a short name."""

    path: str
    weight: float | None
    name: str


def parse_mixture(spec: str) -> list[MixtureEntry]:
    """``"a:0.9,b:0.1"`` -> entries; a single ``PATH`` gives one entry with weight ``None``.

    Raises:
        ValueError: an empty part, a weight that is not a positive number, weights on some
            parts only, or the same path twice (the message shows the fix).
    """
    parts = [p.strip() for p in spec.split(",")]
    if any(not p for p in parts):
        raise ValueError(
            f"data.train={spec!r} has an empty part; write PATH[:WEIGHT],PATH[:WEIGHT], e.g. "
            "data/fineweb:0.9,data/longdocs:0.1"
        )
    entries: list[MixtureEntry] = []
    names: set[str] = set()
    for part in parts:
        path, sep, tail = part.rpartition(":")
        weight: float | None = None
        if sep and path and not tail.startswith(("/", "\\")):
            try:
                weight = float(tail)
            except ValueError:
                path, weight = part, None  # a path with a colon in it
        else:
            path = part
        if weight is not None and not (weight > 0 and math.isfinite(weight)):
            raise ValueError(
                f"data.train: weight of {path!r} must be a positive number, got {tail}"
            )
        name = os.path.basename(os.path.normpath(path)) or path
        base, k = name, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.add(name)
        entries.append(MixtureEntry(path, weight, name))
    given = [e.weight is not None for e in entries]
    if any(given) and not all(given):
        raise ValueError(
            f"data.train={spec!r}: give a weight to every source or to none (none: in proportion "
            "to their tokens)"
        )
    paths = [os.path.normpath(e.path) for e in entries]
    if len(set(paths)) != len(paths):
        raise ValueError(f"data.train={spec!r} lists a source twice; merge their weights")
    return entries


class Mixture:
    """Training tokens drawn from several sources with fixed probabilities.

    Args:
        sources: the token streams.
        weights: one per source (normalised here), or ``None`` for "in proportion to tokens".
        names: short names, used in logs and validation metrics.
    """

    def __init__(
        self,
        sources: Sequence[TokenSource],
        weights: Sequence[float] | None,
        names: Sequence[str],
    ) -> None:
        if not sources or len(sources) != len(names):
            raise ValueError("a mixture needs one name per source and at least one source")
        self.sources = list(sources)
        self.names = list(names)
        lengths = np.array([len(s) for s in sources], dtype=np.float64)
        w = lengths if weights is None else np.asarray(weights, dtype=np.float64)
        if len(w) != len(sources) or not np.all(w > 0):
            raise ValueError(f"mixture weights must be positive, one per source; got {list(w)}")
        self.probs = w / w.sum()

    def __len__(self) -> int:
        return int(sum(len(s) for s in self.sources))

    def rows(self, seed: int, step: int, batch_size: int, seq_len: int) -> np.ndarray:
        """``[batch_size, 2]`` int64: (source index, window start) of each row of step ``step``."""
        rng = np.random.default_rng([seed, step])
        which = rng.choice(len(self.sources), size=batch_size, p=self.probs)
        spans = np.array([len(s) - seq_len - 1 for s in self.sources], dtype=np.int64)
        if np.any(spans <= 0):
            k = int(np.argmin(spans))
            raise ValueError(
                f"mixture source {self.names[k]!r} has {len(self.sources[k])} tokens, fewer than "
                f"data.seq_len+1={seq_len + 1}; use more data or a shorter data.seq_len"
            )
        starts = rng.integers(0, spans[which] + 1, dtype=np.int64)
        return np.stack([which.astype(np.int64), starts], axis=1)

    def describe(self) -> str:
        return ", ".join(
            f"{n} {p:.3f} ({len(s):,d} tokens)"
            for n, p, s in zip(self.names, self.probs, self.sources)
        )


class MixtureValidation:
    """Held-out tokens of each mixture source; scored one by one and combined by weight."""

    def __init__(self, sources: Sequence[TokenSource], probs: np.ndarray, names: Sequence[str]):
        self.sources, self.probs, self.names = list(sources), np.asarray(probs), list(names)

    def evaluate(self, score: Callable[[TokenSource], dict[str, float]]) -> dict[str, Any]:
        """``score`` each source; ``loss`` and ``bpb`` are the weighted means, ``ppl`` their
        ``exp``, and ``NAME/loss``, ``NAME/bpb`` each source's own."""
        parts = [score(s) for s in self.sources]
        out: dict[str, Any] = {}
        for key in ("loss", "bpb"):
            out[key] = float(sum(p * r[key] for p, r in zip(self.probs, parts)))
        out["ppl"] = math.exp(min(out["loss"], 50.0))
        out["tokens"] = int(sum(r["tokens"] for r in parts))
        for name, r in zip(self.names, parts):
            out[f"{name}/loss"] = r["loss"]
            out[f"{name}/bpb"] = r["bpb"]
        return out

    def __len__(self) -> int:
        return int(sum(len(s) for s in self.sources))
