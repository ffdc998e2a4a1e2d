"""Mean loss per token position over long held-out documents (arXiv 2512.24695, Fig. 10).

Cuts the corpus split (default test) into non-overlapping windows of --length tokens, runs
every checkpoint over each whole window and writes context_usage.png (loss vs position,
log x), context_usage.json and context_usage.md (log-spaced buckets, loss ± standard error)
to --out. Several --checkpoint flags draw several curves on one plot.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from nestlearn.cli._common import add_freeze_memory_arg

COMMAND = "context-usage"
HELP = "loss as a function of token position over long held-out documents (Fig. 10)"
DESCRIPTION = __doc__

logger = logging.getLogger(__name__)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="RUN",
        help="run or checkpoint folder; repeat to compare models on one plot",
    )
    p.add_argument(
        "--label", action="append", default=None, help="curve name per --checkpoint (in order)"
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "validation", "test"],
        help="corpus split (default test)",
    )
    p.add_argument(
        "--length", type=int, default=4096, help="window length in tokens (default 4096)"
    )
    p.add_argument(
        "--max-windows", type=int, default=None, help="windows to score (default: all of the split)"
    )
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    p.add_argument(
        "--segment",
        type=int,
        default=None,
        help="feed SEGMENT tokens at a time with the state threaded (less memory, same result)",
    )
    add_freeze_memory_arg(p)
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default RUN/context_usage, or ./context_usage for several runs)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from nestlearn.eval.context_usage import (
        corpus_windows,
        position_losses,
        summarize,
        write_report,
    )
    from nestlearn.eval.zeroshot.scorer import set_memory_updates
    from nestlearn.train.run import load_run
    from nestlearn.utils.tables import format_table

    if args.length < 2:
        raise ValueError(f"--length must be >= 2, got {args.length}")
    if args.max_windows is not None and args.max_windows <= 0:
        raise ValueError(f"--max-windows must be positive, got {args.max_windows}")
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    labels = args.label or []
    if labels and len(labels) != len(args.checkpoint):
        raise ValueError(
            f"got {len(labels)} --label for {len(args.checkpoint)} --checkpoint; give one per checkpoint or none"
        )
    results = []
    run_dirs: list[Path] = []
    windows_by_tok: dict[str, object] = {}
    for k, ckpt in enumerate(args.checkpoint):
        t0 = time.perf_counter()
        loaded = load_run(ckpt)
        run_dirs.append(loaded.checkpoint.parent.parent)
        tok_name = loaded.cfg.data.tokenizer
        if tok_name not in windows_by_tok:
            windows_by_tok[tok_name] = corpus_windows(
                loaded.tokenizer, args.split, args.length, args.max_windows
            )
        windows = windows_by_tok[tok_name]
        if not set_memory_updates(loaded.model, not args.freeze_memory) and args.freeze_memory:
            logger.warning("--freeze-memory: %s has no test-time memory", ckpt)
        max_len = loaded.cfg.model.max_seq_len
        if args.length > max_len:
            logger.warning(
                "%s: --length %d exceeds model.max_seq_len %d; later positions are extrapolation",
                ckpt,
                args.length,
                max_len,
            )
        label = labels[k] if labels else f"{run_dirs[-1].name}@{loaded.step}"
        losses = position_losses(
            loaded.model,
            windows,
            batch_size=args.batch_size,
            segment=args.segment,
            progress=sys.stderr.isatty(),
        )
        results.append(
            summarize(
                losses,
                label,
                train_len=loaded.cfg.data.seq_len,
                checkpoint=str(loaded.checkpoint),
                family=loaded.cfg.model.family,
                tokenizer=tok_name,
                split=args.split,
                freeze_memory=bool(args.freeze_memory),
                seconds=round(time.perf_counter() - t0, 2),
            )
        )
    if args.out:
        out = Path(args.out)
    elif len(args.checkpoint) == 1:
        out = run_dirs[0] / "context_usage"
    else:
        out = Path("context_usage")
    paths = write_report(results, out)
    if args.json:
        print(
            json.dumps(
                {
                    "files": {k: str(v) for k, v in paths.items()},
                    "results": [
                        {
                            "label": r.label,
                            "windows": r.windows,
                            "length": r.length,
                            "buckets": r.buckets,
                            **r.meta,
                        }
                        for r in results
                    ],
                }
            )
        )
        return 0
    headers = ["positions"] + [r.label for r in results]
    rows = []
    for i, b in enumerate(results[0].buckets):
        span = f"{b['start']}" if b["start"] == b["end"] else f"{b['start']}-{b['end']}"
        rows.append(
            [span] + [f"{r.buckets[i]['loss']:.4f} ± {r.buckets[i]['stderr']:.4f}" for r in results]
        )
    print(format_table(headers, rows))
    print(
        f"\nmean next-token loss (nats) by position, {results[0].windows} windows of "
        f"{args.length} tokens from corpus/{args.split}"
    )
    print(f"plot: {paths['png']}\ntable: {paths['md']}\ndata: {paths['json']}")
    return 0
