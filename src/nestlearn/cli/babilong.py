"""BABILong-style evaluation of a trained checkpoint: bAbI qa1-qa5 facts hidden in long text.

Writes to --out: records.jsonl (one line per sample), summary.json, table.txt (task x length,
accuracy in percent) and babilong.png (accuracy against length). The bAbI test files are read
from --babi-dir, $NESTLEARN_BABI_DIR, or ../shared/datasets/babi. See docs/evaluation_synthetic.md.

Example:
  nestlearn babilong --checkpoint runs/tiny --tasks qa1,qa2 --lengths 0,1k,2k,4k --out results/babilong
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nestlearn.cli._common import (
    add_answer_args,
    add_checkpoint_arg,
    answer_with_progress,
    print_run_table,
    run_label,
    run_summary,
    set_threads,
)

COMMAND = "babilong"
HELP = "BABILong-style qa1-qa5: accuracy by task and input length"
DESCRIPTION = __doc__


def add_args(p: argparse.ArgumentParser) -> None:
    add_checkpoint_arg(p)
    p.add_argument("--tasks", default="qa1,qa2,qa3,qa4,qa5", help="comma-separated bAbI tasks")
    p.add_argument(
        "--lengths", default="0,1k,2k,4k", help="input lengths in tokens (0 = facts only)"
    )
    p.add_argument(
        "--samples", type=int, default=100, help="samples per task and length (default 100)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    p.add_argument(
        "--babi-dir", metavar="DIR", help="folder with tasks_1-20_v1-2/en-10k (bAbI v1.2)"
    )
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument(
        "--split", default="test", choices=["test", "validation"], help="background text split"
    )
    add_answer_args(p, 16, "generation budget")


def run(args: argparse.Namespace) -> int:
    from nestlearn.data.synthetic.babilong import BABI_TASKS, find_babi_dir
    from nestlearn.data.synthetic.common import parse_lengths
    from nestlearn.eval.babilong import (
        babilong_summary,
        babilong_table,
        evaluate_babilong,
        plot_babilong,
    )
    from nestlearn.eval.niah import write_results
    from nestlearn.train.run import load_run

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in BABI_TASKS]
    if bad or not tasks:
        raise ValueError(
            f"unknown --tasks {bad or args.tasks!r}; choose from {', '.join(BABI_TASKS)}"
        )
    lengths = parse_lengths(args.lengths)
    if args.samples <= 0:
        raise ValueError(f"--samples must be positive, got {args.samples}")
    babi = find_babi_dir(args.babi_dir)
    set_threads(args.threads)
    run = load_run(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = {"desc": "babilong"}
    records = answer_with_progress(evaluate_babilong, run, args, tasks, lengths, bar, babi_dir=babi)
    label = run_label(args, run)
    summary = run_summary(
        run,
        babi_dir=str(babi),
        samples_per_cell=args.samples,
        seed=args.seed,
        accuracy=babilong_summary(records),
    )
    table = babilong_table(records)
    write_results(out, records, summary, table)
    png = plot_babilong(records, out / "babilong.png", title=f"BABILong-style, {label}")
    print_run_table(label, run, table)
    print(f"results in {out}; plot {png}")
    return 0
