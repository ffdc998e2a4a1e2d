"""The token sources a run trains and validates on, named by its ``data`` config section.

``data.train`` names one source (``corpus`` or a prepared folder) or a source mixture
``PATH[:WEIGHT],PATH[:WEIGHT],...`` (see :mod:`nestlearn.data.mixture`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nestlearn.data.mixture import Mixture, MixtureEntry, MixtureValidation, parse_mixture
from nestlearn.train.batches import SliceTokens, TokenSource
from nestlearn.train.config import TrainConfig

logger = logging.getLogger(__name__)


def open_data(cfg: TrainConfig) -> tuple[Any, TokenSource, TokenSource]:
    """Tokenizer, training and validation token sources named by ``cfg.data``."""
    from nestlearn.data import TokenShards, default_corpus, get_tokenizer

    tok = get_tokenizer(cfg.data.tokenizer)
    entries = parse_mixture(cfg.data.train)
    if len(entries) > 1 or entries[0].weight is not None:
        return open_mixture(cfg, tok, entries)
    if cfg.data.train == "corpus":
        train = default_corpus(cfg.data.tokenizer, "train")
        val = default_corpus(cfg.data.tokenizer, "validation") if cfg.data.val is None else None
    else:
        path = Path(cfg.data.train)
        if not path.is_dir():
            raise ValueError(
                f"data.train={cfg.data.train!r} is neither 'corpus' nor a folder; make one with "
                "`nestlearn prepare FILES --out DIR`"
            )
        train = TokenShards(path)
        _check_tokenizer(train, cfg.data.tokenizer, path)
        val = None
        if cfg.data.val is None:
            n = len(train)
            cut = int(n * (1 - cfg.data.val_fraction))
            train, val = SliceTokens(train, 0, cut), SliceTokens(train, cut, n)
    if val is None:
        val = TokenShards(Path(cfg.data.val))
        _check_tokenizer(val, cfg.data.tokenizer, Path(cfg.data.val))
    return tok, train, val


def _check_tokenizer(shards: Any, name: str, path: Path) -> None:
    meta = getattr(shards, "metadata", {}) or {}
    got = meta.get("tokenizer") if isinstance(meta, dict) else None
    if isinstance(got, dict):
        got = got.get("name")
    if got and got != name:
        raise ValueError(
            f"{path} was prepared with tokenizer {got!r} but data.tokenizer={name!r}; "
            f"set data.tokenizer={got} or prepare the data again"
        )


def _open_source(cfg: TrainConfig, path: str) -> tuple[TokenSource, TokenSource | None]:
    """Training tokens of one mixture part and its held-out tail (``None`` if data.val is set)."""
    from nestlearn.data import TokenShards, default_corpus

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
