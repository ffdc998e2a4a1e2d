"""``nestlearn prepare``: tokenize text files, folders or JSONL into memmap shards.

The work is :func:`nestlearn.data.prepare.prepare`; this module parses and prints the summary.
"""

from __future__ import annotations

import argparse
import time

from nestlearn.data.prepare import DEFAULT_SHARD_TOKENS, prepare

COMMAND = "prepare"
HELP = "tokenize text files, folders or JSONL into memmap shards"
DESCRIPTION = None


def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``nestlearn prepare`` arguments to ``parser`` (a subcommand parser)."""
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="text, JSONL (.jsonl, .jsonl.gz, .jsonl.zst) or parquet files, or folders "
        "(datasets save_to_disk folders and dataset repositories included)",
    )
    parser.add_argument("--out", required=True, help="output folder for shards + metadata.json")
    parser.add_argument(
        "--tokenizer", default="byte", help="byte, bpe-8192 or hf:PATH (default: byte)"
    )
    parser.add_argument(
        "--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="token ids per shard file"
    )
    parser.add_argument(
        "--text-key", default="text", help="JSONL field or table column with the document text"
    )
    parser.add_argument(
        "--split",
        default="train",
        help="split to read from folders holding several (default train)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="tokenizing processes (default 0: one per CPU); the output does not depend on it",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing preparation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run :func:`prepare` from parsed ``args`` and print a short summary; returns an exit code."""
    t0 = time.perf_counter()
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0 (0: one per CPU), got {args.workers}")
    meta = prepare(
        args.inputs,
        args.out,
        args.tokenizer,
        shard_tokens=args.shard_tokens,
        text_key=args.text_key,
        split=getattr(args, "split", "train"),
        progress=not args.no_progress,
        overwrite=args.overwrite,
        workers=getattr(args, "workers", 0),
    )
    tok = meta["tokenizer"]
    dt = time.perf_counter() - t0
    print(
        f"prepared {args.out}: {meta['n_documents']:,d} documents from {len(meta['sources'])} "
        f"files, {meta['n_bytes']:,d} bytes -> {meta['n_tokens']:,d} {tok['name']} tokens "
        f"({meta['n_bytes'] / meta['n_tokens']:.2f} bytes/token, vocab {tok['vocab_size']}, "
        f"{meta['dtype']}) in {len(meta['shards'])} shards, {dt:.1f}s"
    )
    return 0
