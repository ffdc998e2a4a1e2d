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

COMMAND = "babilong"
HELP = "BABILong-style qa1-qa5: accuracy by task and input length"
DESCRIPTION = __doc__


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", required=True, metavar="RUN", help="run folder or checkpoint folder"
    )
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
    p.add_argument("--max-new-tokens", type=int, default=16, help="generation budget")
    p.add_argument("--batch-size", type=int, default=4, help="prompts decoded together")
    p.add_argument("--prefill-chunk", type=int, default=2048, help="tokens per prefill call")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

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
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run = load_run(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(tasks) * len(lengths) * args.samples, desc="babilong", disable=None) as bar:
        records = evaluate_babilong(
            run.model,
            run.tokenizer,
            tasks,
            lengths,
            args.samples,
            seed=args.seed,
            split=args.split,
            babi_dir=babi,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            prefill_chunk=args.prefill_chunk,
            progress=bar.update,
        )
    label = f"{Path(args.checkpoint).name}@{run.step}"
    summary = {
        "checkpoint": str(run.checkpoint),
        "family": run.cfg.model.family,
        "tokenizer": run.tokenizer.name,
        "babi_dir": str(babi),
        "samples_per_cell": args.samples,
        "seed": args.seed,
        "accuracy": babilong_summary(records),
    }
    table = babilong_table(records)
    write_results(out, records, summary, table)
    png = plot_babilong(records, out / "babilong.png", title=f"BABILong-style, {label}")
    print(f"{label} ({run.cfg.model.family}, tokenizer {run.tokenizer.name})\n{table}")
    print(f"results in {out}; plot {png}")
    return 0
