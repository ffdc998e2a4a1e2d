"""Shared pieces of the synthetic generators: seeding, token-task containers.

Every generator here is deterministic given its ``seed``: the random stream of a sample is
derived from ``(seed, task name, length, sample index)`` through :class:`numpy.random.SeedSequence`
with CRC-32 of the string parts, so the same sample comes out in any process, on any platform,
whatever else was generated before it (Python's ``hash`` is salted per process and is never used).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = -100
"""Target value of positions that carry no loss and no accuracy (PyTorch's cross-entropy default)."""


def seed_sequence(seed: int, *parts: str | int) -> np.random.SeedSequence:
    """A SeedSequence keyed by ``seed`` and any mix of strings and non-negative ints."""
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    words = [int(seed)]
    for p in parts:
        if isinstance(p, str):
            words.append(zlib.crc32(p.encode("utf-8")))
        else:
            if p < 0:
                raise ValueError(f"seed parts must be non-negative, got {p}")
            words.append(int(p))
    return np.random.SeedSequence(words)


def parse_lengths(spec: str) -> list[int]:
    """Parse ``"0,1k,2K,4096,1m"`` into token counts (``k`` = 1024, ``m`` = 1024**2)."""
    out = []
    for part in spec.split(","):
        part = part.strip().lower()
        if not part:
            continue
        scale = {"k": 1024, "m": 1024**2}.get(part[-1], 1)
        try:
            value = int(float(part[:-1] if scale > 1 else part) * scale)
        except ValueError:
            raise ValueError(f"bad length {part!r} in {spec!r}; write e.g. 1024,2k,4k") from None
        if value < 0:
            raise ValueError(f"lengths must be >= 0, got {part!r}")
        out.append(value)
    if not out:
        raise ValueError(f"no lengths in {spec!r}; write e.g. 1024,2k,4k")
    return out


def make_rng(seed: int, *parts: str | int) -> np.random.Generator:
    """``numpy`` Generator for the stream named by ``(seed, *parts)``."""
    return np.random.default_rng(seed_sequence(seed, *parts))


@dataclass
class TokenSegment:
    """A batch of equal-length token sequences with per-position targets.

    Attributes:
        inputs: ``[N, T]`` int64 token ids fed to the model.
        targets: ``[N, T]`` int64; ``targets[n, t]`` is what the model's output at position
            ``t`` must predict, :data:`IGNORE_INDEX` where nothing is scored.
        name: a label for reports, e.g. ``"T=64,kv=4"``.
        meta: generator settings of this segment (JSON-able).
    """

    inputs: np.ndarray
    targets: np.ndarray
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.inputs.shape != self.targets.shape or self.inputs.ndim != 2:
            raise ValueError(
                f"inputs {self.inputs.shape} and targets {self.targets.shape} must both be [N, T]"
            )

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.inputs.shape[1])

    @property
    def scored(self) -> int:
        """Number of scored positions (targets that are not :data:`IGNORE_INDEX`)."""
        return int((self.targets != IGNORE_INDEX).sum())


@dataclass
class TokenTask:
    """A synthetic token task: training and test segments over one small vocabulary.

    Attributes:
        name: task name (``mqar``, ``in_context_recall``, ...).
        vocab_size: every id in inputs and targets is in ``[0, vocab_size)``.
        train: training segments (a mixture when several).
        test: test segments, scored separately and together.
        readout: ``"lm"`` (the model's logits at each position are scored) or ``"autoencoder"``
            (MAD compression: the sequence is decoded from the last position's hidden state).
        meta: the generator's settings, recorded beside results.
    """

    name: str
    vocab_size: int
    train: list[TokenSegment]
    test: list[TokenSegment]
    readout: str = "lm"
    meta: dict = field(default_factory=dict)

    @property
    def max_seq_len(self) -> int:
        return max(s.seq_len for s in [*self.train, *self.test])
