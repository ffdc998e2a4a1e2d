#!/usr/bin/env python
"""Train the vendored byte-level BPE (``bpe-8192``) on the TRAIN split of the default corpus.

Byte-level (GPT-2 style): the ByteLevel pre-tokenizer maps every UTF-8 byte to a symbol and splits
with the GPT-2 regex, the initial alphabet holds all 256 bytes, and the ByteLevel decoder maps back,
so ``decode(encode(s)) == s`` for any text. Specials ``<|bos|>`` = 0, ``<|eos|>`` = 1,
``<|pad|>`` = 2. No normalizer (exact round trip) and no prefix space.

Only the train split is used, so validation and test text stays unseen by the tokenizer too.

The same training, on any text and at any size, is ``nestlearn train-tokenizer``.

Usage::

    python scripts/train_tokenizer.py                      # writes assets/tokenizers/bpe-8192.json
    python scripts/train_tokenizer.py --vocab-size 4096 --out /tmp/bpe-4096.json
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

from nestlearn.data.bpe import build_bpe
from nestlearn.data.corpus import corpus_documents
from nestlearn.data.tokenizers import bpe_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--out", type=Path, help="output tokenizer.json (default: the vendored path)")
    args = p.parse_args(argv)
    out = args.out or bpe_path(args.vocab_size)

    t0 = time.perf_counter()
    texts = [text for _, text in corpus_documents("train")]
    tok = build_bpe(texts, args.vocab_size, length=len(texts))
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
