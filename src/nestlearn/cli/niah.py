"""RULER-style needle-in-a-haystack evaluation of a trained checkpoint.

Writes to --out: records.jsonl (one line per sample: task, length, depth, answers, prediction,
score), summary.json, table.txt (task x length, string-match recall in percent) and
niah_heatmap.png (needle depth x length for the S-NIAH tasks). See docs/evaluation_synthetic.md.

Examples:
  nestlearn niah --checkpoint runs/tiny --lengths 1k,2k,4k --samples 100 --out results/niah
  nestlearn niah --generate-only --tokenizer bpe-8192 --tasks s_niah_2 --lengths 4k --out prompts
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from nestlearn.cli._common import (
    add_answer_args,
    answer_with_progress,
    print_run_table,
    run_label,
    run_summary,
    set_threads,
)

COMMAND = "niah"
HELP = "RULER needle-in-a-haystack tasks: table (task x length) and depth heat map"
DESCRIPTION = __doc__

PAPER_TASKS = "s_niah_1,s_niah_2,s_niah_3,mk_niah_1,mq_niah,mv_niah"
logger = logging.getLogger(__name__)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", metavar="RUN", help="run folder or checkpoint folder")
    p.add_argument(
        "--tasks",
        default=PAPER_TASKS,
        help=f"comma-separated tasks (default: the paper's Table 1, {PAPER_TASKS}; also mk_niah_2, mk_niah_3)",
    )
    p.add_argument(
        "--lengths", default="1k,2k,4k", help="context lengths in tokens, e.g. 1k,2k,4k,8k,16k"
    )
    p.add_argument(
        "--samples", type=int, default=100, help="samples per task and length (default 100)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "validation"],
        help="corpus split of the haystacks",
    )
    p.add_argument(
        "--depths",
        default="grid",
        choices=["grid", "ruler"],
        help="grid: single-needle samples cycle through depths 0,10,...,100%% (heat map); "
        "ruler: RULER's random depths",
    )
    add_answer_args(p, 128, "generation budget (RULER: 128)")
    p.add_argument(
        "--dump-samples", action="store_true", help="also write the prompts to samples.jsonl"
    )
    p.add_argument(
        "--generate-only",
        action="store_true",
        help="write samples.jsonl without a model (needs --tokenizer)",
    )
    p.add_argument("--tokenizer", help="tokenizer for --generate-only (byte, bpe-8192, hf:PATH)")


def _parse_tasks(spec: str) -> list[str]:
    from nestlearn.data.synthetic.niah import NIAH_TASKS

    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    bad = [t for t in tasks if t not in NIAH_TASKS]
    if bad or not tasks:
        raise ValueError(f"unknown --tasks {bad or spec!r}; choose from {', '.join(NIAH_TASKS)}")
    return tasks


def run(args: argparse.Namespace) -> int:
    from nestlearn.data.synthetic.common import parse_lengths
    from nestlearn.eval.niah import HEATMAP_DEPTHS

    tasks = _parse_tasks(args.tasks)
    lengths = parse_lengths(args.lengths)
    if args.samples <= 0:
        raise ValueError(f"--samples must be positive, got {args.samples}")
    depths = HEATMAP_DEPTHS if args.depths == "grid" else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(args.threads)
    if args.generate_only:
        return _generate_only(args, tasks, lengths, depths, out)
    if not args.checkpoint:
        raise ValueError(
            "give --checkpoint RUN (or --generate-only --tokenizer NAME to only write prompts)"
        )
    return _evaluate(args, tasks, lengths, depths, out)


def _write_samples(args, tasks, lengths, depths, tok, path: Path) -> int:  # noqa: ANN001
    from nestlearn.data.synthetic.niah import generate_niah

    n = 0
    with path.open("w", encoding="utf-8") as f:
        for task in tasks:
            for length in lengths:
                for s in generate_niah(
                    task,
                    tok,
                    length,
                    args.samples,
                    seed=args.seed,
                    split=args.split,
                    depths=depths,
                    max_new_tokens=args.max_new_tokens,
                ):
                    f.write(json.dumps(s.to_dict(with_ids=True)) + "\n")
                    n += 1
    return n


def _generate_only(args, tasks, lengths, depths, out: Path) -> int:  # noqa: ANN001
    from nestlearn.data import get_tokenizer

    if not args.tokenizer:
        raise ValueError("--generate-only needs --tokenizer (byte, bpe-8192 or hf:PATH)")
    n = _write_samples(
        args, tasks, lengths, depths, get_tokenizer(args.tokenizer), out / "samples.jsonl"
    )
    print(f"wrote {n} samples to {out / 'samples.jsonl'}")
    return 0


def _evaluate(args, tasks, lengths, depths, out: Path) -> int:  # noqa: ANN001
    from nestlearn.eval.niah import (
        evaluate_niah,
        niah_table,
        plot_niah_heatmap,
        summarize,
        write_results,
    )
    from nestlearn.train.run import load_run

    run = load_run(args.checkpoint)
    if args.dump_samples:
        _write_samples(args, tasks, lengths, depths, run.tokenizer, out / "samples.jsonl")
    bar = {"desc": "niah", "unit": "sample"}
    records = answer_with_progress(evaluate_niah, run, args, tasks, lengths, bar, depths=depths)
    label = run_label(args, run)
    summary = run_summary(
        run,
        samples_per_cell=args.samples,
        seed=args.seed,
        haystack_split=args.split,
        depths=args.depths,
        scores=summarize(records),
    )
    table = niah_table(records)
    write_results(out, records, summary, table)
    png = plot_niah_heatmap(records, out / "niah_heatmap.png", title=label)
    print_run_table(label, run, table)
    print(f"results in {out}" + (f"; heat map {png}" if png else ""))
    return 0
