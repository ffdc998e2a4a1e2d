"""Train a byte-level BPE of a chosen size on your text (see ``nestlearn.data.bpe``).

The result is a tokenizer.json built like the vendored bpe-8192 (GPT-2 byte-level BPE, exact
round trip, specials <|bos|> <|eos|> <|pad|>); use it as hf:PATH in prepare and training.

Examples:
  nestlearn train-tokenizer corpus --vocab-size 16384 --out tok/bpe-16k.json
  nestlearn train-tokenizer data/fineweb-edu/ --vocab-size 32768 --max-bytes 2000000000 --out tok/
  nestlearn train-tokenizer data/mine-bytes --vocab-size 4096 --out tok/bpe-4k.json
  nestlearn prepare data/fineweb-edu/ --out data/fw --tokenizer hf:tok/tokenizer.json
"""

from __future__ import annotations

import argparse
import time

COMMAND = "train-tokenizer"
HELP = "train a byte-level BPE of a chosen size on text, a dataset or a byte-prepared folder"
DESCRIPTION = __doc__


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="corpus (the embedded train split), files or folders prepare reads, or a folder "
        "prepared with --tokenizer byte",
    )
    p.add_argument("--vocab-size", type=int, required=True, help="ids in the tokenizer (> 259)")
    p.add_argument("--out", required=True, help="tokenizer.json to write (or a folder for it)")
    p.add_argument("--text-key", default="text", help="JSONL field or table column with the text")
    p.add_argument("--split", default="train", help="split of folders holding several")
    p.add_argument(
        "--max-bytes", type=int, default=0, help="read at most this much text (0: all of it)"
    )


def run(args: argparse.Namespace) -> int:
    from nestlearn.data.bpe import train_tokenizer

    if args.max_bytes < 0:
        raise ValueError(f"--max-bytes must be >= 0, got {args.max_bytes}")
    t0 = time.perf_counter()
    info = train_tokenizer(
        args.inputs,
        args.out,
        args.vocab_size,
        text_key=args.text_key,
        split=args.split,
        max_bytes=args.max_bytes,
    )
    print(
        f"wrote {info['path']}: byte-level BPE, vocab {info['vocab_size']}, trained on "
        f"{info['documents']:,d} documents ({info['bytes']:,d} bytes) in "
        f"{time.perf_counter() - t0:.1f}s; sha256 {info['sha256'][:16]}…\n"
        f"use it with --tokenizer hf:{info['path']} (prepare) and data.tokenizer=hf:{info['path']}"
    )
    return 0
