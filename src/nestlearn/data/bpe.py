"""Train a byte-level BPE of any size on your own text: ``nestlearn train-tokenizer``.

The tokenizer is built exactly like the vendored ``bpe-8192`` (GPT-2 style: ByteLevel
pre-tokenizer with the GPT-2 regex, all 256 bytes in the initial alphabet, no normalizer, no
prefix space, ByteLevel decoder; specials ``<|bos|>`` 0, ``<|eos|>`` 1, ``<|pad|>`` 2), so
``decode(encode(s)) == s`` for every string and bits per byte are exact. The result is a
``tokenizer.json`` that ``prepare`` and training use as ``hf:PATH``.

Text comes from:

* ``corpus``: the train split of the embedded corpus (how ``bpe-8192`` was made);
* anything ``nestlearn prepare`` reads (text, JSONL[.gz|.zst], parquet, ``datasets`` folders);
* a folder prepared with the ``byte`` tokenizer (its ids are the UTF-8 bytes, so the documents
  are recovered exactly, split at eos).

``max_bytes`` caps the text read (documents in input order until the cap): BPE merges settle
long before a web-scale corpus is exhausted. Training is deterministic: the same text and size
give the same file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nestlearn.data.tokenizers import SPECIAL_TOKENS

logger = logging.getLogger(__name__)


def build_bpe(texts: Any, vocab_size: int, *, length: int | None = None) -> Any:
    """A byte-level BPE (a ``tokenizers.Tokenizer``) with ``vocab_size`` ids trained on ``texts``.

    Raises:
        ValueError: ``vocab_size`` below 259 + 1 (specials and bytes need 259 ids), or too little
            text to learn that many merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    floor = len(SPECIAL_TOKENS) + 256
    if vocab_size <= floor:
        raise ValueError(
            f"vocab_size must exceed {floor} (3 specials + 256 bytes), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the text supports only {tok.get_vocab_size()} ids (merges seen at least twice), "
            f"not {vocab_size}; give more text or a smaller --vocab-size"
        )
    return tok


def _byte_folder_documents(folder: Path) -> Iterator[str]:
    from nestlearn.data.dataset import TokenShards

    shards = TokenShards(folder)
    if shards.tokenizer_name != "byte":
        raise ValueError(
            f"{folder} holds {shards.tokenizer_name} ids, which cannot be turned back into text "
            "exactly; train on the original inputs (the files you gave prepare) or on a folder "
            "prepared with --tokenizer byte"
        )
    eos, block = shards.eos_id, 1 << 24
    pending = np.empty(0, dtype=np.int64)
    for start in range(0, len(shards), block):
        ids = np.concatenate([pending, shards.get(start, min(block, len(shards) - start))])
        ends = np.flatnonzero(ids == eos)
        lo = 0
        for e in ends:
            yield ids[lo:e].astype(np.uint8).tobytes().decode("utf-8", errors="replace")
            lo = e + 1
        pending = ids[lo:].astype(np.int64)


def training_texts(
    inputs: Sequence[str | Path], text_key: str = "text", split: str = "train"
) -> Iterator[str]:
    """The non-empty documents of ``inputs`` (``corpus``, prepare's inputs, byte folders)."""
    from nestlearn.data.corpus import corpus_documents
    from nestlearn.data.readers import collect_sources

    plain: list[str | Path] = []

    def flush() -> Iterator[str]:
        if plain:
            for src in collect_sources(list(plain), text_key, split):
                yield from (t for t in src.documents(text_key) if t)
            plain.clear()

    for item in inputs:
        p = Path(item)
        if str(item) == "corpus" and not p.exists():
            yield from flush()
            yield from (t for _, t in corpus_documents("train"))
        elif p.is_dir() and (p / "metadata.json").is_file():
            yield from flush()
            yield from (t for t in _byte_folder_documents(p) if t)
        else:
            plain.append(item)
    yield from flush()


def train_tokenizer(
    inputs: Sequence[str | Path],
    out: str | Path,
    vocab_size: int,
    *,
    text_key: str = "text",
    split: str = "train",
    max_bytes: int = 0,
) -> dict[str, Any]:
    """Train a byte-level BPE of ``vocab_size`` ids on ``inputs`` and save it at ``out``.

    Returns a summary: ``path``, ``vocab_size``, ``documents``, ``bytes`` read, ``sha256``.
    """
    import hashlib

    stats = {"documents": 0, "bytes": 0}

    def texts() -> Iterator[str]:
        for t in training_texts(inputs, text_key, split):
            n = len(t.encode("utf-8"))
            if max_bytes and stats["bytes"] + n > max_bytes:
                t = t.encode("utf-8")[: max_bytes - stats["bytes"]].decode("utf-8", "ignore")
                n = len(t.encode("utf-8"))
            stats["documents"] += 1
            stats["bytes"] += n
            yield t
            if max_bytes and stats["bytes"] >= max_bytes:
                return

    tok = build_bpe(texts(), vocab_size)
    out = Path(out)
    if out.is_dir() or out.suffix != ".json":
        out = out / "tokenizer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out), pretty=True)
    raw = out.read_bytes()
    json.loads(raw)  # what we wrote must be a readable tokenizer.json
    logger.info(
        "trained a %d-id BPE on %d documents (%d bytes): %s",
        vocab_size,
        stats["documents"],
        stats["bytes"],
        out,
    )
    return {
        "path": str(out),
        "vocab_size": vocab_size,
        **stats,
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
