"""Checking token ids against a vocabulary before they reach a model."""

from __future__ import annotations

import numpy as np


def check_ids(ids: np.ndarray, vocab_size: int, source: object = None) -> None:
    """Raise ``ValueError`` naming the first id outside ``[0, vocab_size)`` and where it came
    from (a prepared folder made with another tokenizer, or damaged shards)."""
    if ids.size == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo >= 0 and hi < vocab_size:
        return
    bad = lo if lo < 0 else hi
    where = getattr(source, "path", None) or getattr(getattr(source, "base", None), "path", None)
    raise ValueError(
        f"token id {bad} is outside the model's vocabulary [0, {vocab_size})"
        + (f" in {where}" if where else "")
        + "; the data was prepared with another tokenizer or is damaged: prepare it again with "
        "the run's data.tokenizer"
    )
