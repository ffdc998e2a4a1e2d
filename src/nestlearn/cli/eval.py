"""``nestlearn eval``: perplexity and bits-per-byte of a checkpoint, or zero-shot tasks."""

from __future__ import annotations

import argparse
from pathlib import Path

from nestlearn.cli._common import (
    UsageError,
    add_checkpoint_arg,
    add_freeze_memory_arg,
    add_stream_args,
    check_state_out,
    freeze,
    load_state_arg,
    save_state_arg,
)

COMMAND = "eval"
HELP = "perplexity and bits-per-byte of a checkpoint"
DESCRIPTION = None


def add_args(p: argparse.ArgumentParser) -> None:
    add_checkpoint_arg(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--split",
        default="validation",
        choices=["train", "validation", "test"],
        help="corpus split (default validation)",
    )
    src.add_argument("--text", metavar="FILE", help="evaluate on a UTF-8 text file instead")
    src.add_argument(
        "--data", metavar="DIR", help="evaluate on a folder made by `nestlearn prepare`"
    )
    p.add_argument("--tokens", type=int, default=262144, help="tokens to score (default 262144)")
    p.add_argument(
        "--seq-len", type=int, default=None, help="window length (default: the run's data.seq_len)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--tasks",
        metavar="T1,T2",
        help="zero-shot tasks instead of perplexity (piqa, arc_easy, ...; see docs/evaluation.md)",
    )
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the task data sets")
    p.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    add_freeze_memory_arg(p)
    add_stream_args(p, "evaluate one stream (batch 1) with the memory state threaded through")


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from nestlearn.train.batches import ArrayTokens
    from nestlearn.train.run import load_run
    from nestlearn.train.validation import evaluate_lm, token_byte_lengths

    stream = args.stream or bool(args.state_in or args.state_out)
    if args.tokens <= 0:
        raise UsageError(f"--tokens must be positive, got {args.tokens}")
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    if args.seq_len is not None and args.seq_len < 1:
        raise UsageError(f"--seq-len must be positive, got {args.seq_len}")
    if args.tasks:
        if stream:
            raise UsageError("--stream/--state-in/--state-out apply to perplexity, not --tasks")
        try:
            from nestlearn.cli._eval_tasks import run_tasks
        except ImportError as e:
            raise UsageError(f"task evaluation is not available in this install ({e})") from e
        return run_tasks(args)
    run = load_run(args.checkpoint)
    tok = run.tokenizer
    if args.text:
        path = Path(args.text)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{path} is not UTF-8 text") from None
        if not text.strip():
            raise UsageError(f"{path} is empty")
        source, what = ArrayTokens(np.asarray(tok.encode(text))), str(path)
    elif args.data:
        from nestlearn.data import TokenShards

        source, what = TokenShards(Path(args.data)), args.data
    else:
        from nestlearn.data import default_corpus

        source, what = default_corpus(run.cfg.data.tokenizer, args.split), f"corpus/{args.split}"
    seq = args.seq_len or run.cfg.data.seq_len
    freeze(run.model, run.cfg.model.family, args.freeze_memory)
    check_state_out(args, run.model)
    if stream:
        from nestlearn.eval.stream import evaluate_stream

        ev, state = evaluate_stream(
            run.model,
            source,
            seq_len=seq,
            max_tokens=args.tokens,
            token_bytes=token_byte_lengths(tok, run.cfg.model.vocab_size),
            state=load_state_arg(args, run),
        )
        save_state_arg(args, run, state)
    else:
        ev = evaluate_lm(
            run.model,
            source,
            seq_len=seq,
            batch_size=args.batch_size,
            max_tokens=args.tokens,
            token_bytes=token_byte_lengths(tok, run.cfg.model.vocab_size),
        )
    if args.json:
        head = {"checkpoint": str(run.checkpoint), "data": what, "seq_len": seq}
        print(json.dumps({**head, "mode": "stream" if stream else "windows", **ev}))
    else:
        from nestlearn.utils.tables import format_table

        print(
            format_table(
                ["checkpoint", "data", "tokens", "loss", "perplexity", "bits/byte"],
                [
                    [
                        f"{run.checkpoint.parent.parent.name}@{run.step}",
                        what,
                        ev["tokens"],
                        ev["loss"],
                        ev["ppl"],
                        ev["bpb"],
                    ]
                ],
            )
        )
    return 0
