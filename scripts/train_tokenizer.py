#!/usr/bin/env python
"""Train the vendored byte-level BPE (``bpe-8192``) on the TRAIN split of the default corpus.

Byte-level (GPT-2 style): the ByteLevel pre-tokenizer maps every UTF-8 byte to a symbol and splits
with the GPT-2 regex, the initial alphabet holds all 256 bytes, and the ByteLevel decoder maps back,
so ``decode(encode(s)) == s`` for any text. Specials ``<|bos|>`` = 0, ``<|eos|>`` = 1,
``<|pad|>`` = 2. No normalizer (exact round trip) and no prefix space.

Only the train split is used, so validation and test text stays unseen by the tokenizer too.

Usage::

    python scripts/train_tokenizer.py                      # writes assets/tokenizers/bpe-8192.json
    python scripts/train_tokenizer.py --vocab-size 4096 --out /tmp/bpe-4096.json
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from nestlearn.data.corpus import corpus_documents
from nestlearn.data.tokenizers import SPECIAL_TOKENS, bpe_path


def build_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE with ``vocab_size`` ids trained on ``texts``."""
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
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if tok.get_vocab_size() != vocab_size:
        raise SystemExit(f"trained vocab has {tok.get_vocab_size()} ids, wanted {vocab_size}")
    return tok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--out", type=Path, help="output tokenizer.json (default: the vendored path)")
    args = p.parse_args(argv)
    out = args.out or bpe_path(args.vocab_size)

    t0 = time.perf_counter()
    texts = [text for _, text in corpus_documents("train")]
    tok = build_bpe(texts, args.vocab_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out), pretty=True)
    n_chars = sum(len(t) for t in texts)
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    print(
        f"{out}: vocab {tok.get_vocab_size()}, trained on {len(texts)} train documents "
        f"({n_chars:,d} chars) in {time.perf_counter() - t0:.1f}s; "
        f"{n_chars / n_tokens:.2f} chars/token on train; sha256 {sha}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
