"""Opening a source mixture named by ``data.train`` (see :mod:`nestlearn.data.mixture`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nestlearn.data.mixture import Mixture, MixtureEntry, MixtureValidation
from nestlearn.train.batches import SliceTokens, TokenSource
from nestlearn.train.config import TrainConfig

logger = logging.getLogger(__name__)


def _open_source(cfg: TrainConfig, path: str) -> tuple[TokenSource, TokenSource | None]:
    """Training tokens of one mixture part and its held-out tail (``None`` if data.val is set)."""
    from nestlearn.data import TokenShards, default_corpus
    from nestlearn.train.trainer import _check_tokenizer

    if path == "corpus":
        val = default_corpus(cfg.data.tokenizer, "validation") if cfg.data.val is None else None
        return default_corpus(cfg.data.tokenizer, "train"), val
    if not Path(path).is_dir():
        raise ValueError(
            f"mixture source {path!r} in data.train is neither 'corpus' nor a folder; make one "
            "with `nestlearn prepare FILES --out DIR`"
        )
    shards = TokenShards(path)
    _check_tokenizer(shards, cfg.data.tokenizer, Path(path))
    if cfg.data.val is not None:
        return shards, None
    cut = int(len(shards) * (1 - cfg.data.val_fraction))
    return SliceTokens(shards, 0, cut), SliceTokens(shards, cut, len(shards))


def open_mixture(
    cfg: TrainConfig, tok: Any, entries: list[MixtureEntry]
) -> tuple[Any, Mixture, Any]:
    """Tokenizer, a :class:`Mixture` of ``entries`` and its validation (per source, or data.val)."""
    from nestlearn.data import TokenShards
    from nestlearn.train.trainer import _check_tokenizer

    parts = [_open_source(cfg, e.path) for e in entries]
    weights = None if entries[0].weight is None else [e.weight for e in entries]
    names = [e.name for e in entries]
    train = Mixture([t for t, _ in parts], weights, names)
    logger.info("training mixture: %s", train.describe())
    if cfg.data.val is not None:
        val: Any = TokenShards(Path(cfg.data.val))
        _check_tokenizer(val, cfg.data.tokenizer, Path(cfg.data.val))
    else:
        val = MixtureValidation([v for _, v in parts], train.probs, names)
    return tok, train, val
