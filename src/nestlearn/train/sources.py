"""The token sources a run trains and validates on, named by its ``data`` config section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nestlearn.train.batches import SliceTokens, TokenSource
from nestlearn.train.config import TrainConfig


def open_data(cfg: TrainConfig) -> tuple[Any, TokenSource, TokenSource]:
    """Tokenizer, training and validation token sources named by ``cfg.data``."""
    from nestlearn.data import TokenShards, default_corpus, get_tokenizer

    tok = get_tokenizer(cfg.data.tokenizer)
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
