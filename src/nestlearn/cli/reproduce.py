"""Reproduce the paper's experiments at CPU scale and write one report (``OUT/index.md``).

Trains the tiny presets on one token budget with several seeds, then runs test perplexity,
zero-shot commonsense (Table 2 layout; needs --data-dir or NESTLEARN_DATA_DIR), NIAH (Table 1),
MQAR/MAD (Tables 3-4), formal languages (Table 5), context usage (Fig. 10) and the studies the
suite names (levels, ctnl, knowledge, vit-optim; the first three need SmolLM2-135M on disk:
`nestlearn pretrained smollm2-135m --out DIR` once, or --gguf FILE; without it they are skipped).
Every finished step is cached under OUT/cache, OUT/runs and OUT/studies, so rerunning the same
command resumes.

Suites: smoke (two models, minutes) and small (every registered -tiny preset, 3 seeds, ~2 h on
2 CPU cores). See docs/reproduce.md.

Examples:
  nestlearn reproduce --suite smoke --out report-smoke
  nestlearn reproduce --suite small --data-dir ../shared/datasets --out report
"""

from __future__ import annotations

import argparse

COMMAND = "reproduce"
HELP = "run the paper's experiments at CPU scale and write report/index.md"
DESCRIPTION = __doc__


def add_args(p: argparse.ArgumentParser) -> None:
    from nestlearn.studies.reproduce import SUITES

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--suite", choices=sorted(SUITES), default="smoke", help="default smoke")
    p.add_argument("--out", default="report", metavar="DIR", help="report folder (default report/)")
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="zero-shot task data (default $NESTLEARN_DATA_DIR); without it that section is skipped",
    )
    p.add_argument(
        "--models",
        default="",
        metavar="A,B,...",
        help="families or presets instead of the suite's lineup",
    )
    p.add_argument(
        "--gguf",
        default=None,
        metavar="FILE",
        help="SmolLM2-135M GGUF for the levels/ctnl/knowledge studies (default: the one "
        "`nestlearn pretrained smollm2-135m` cached; never downloaded by reproduce)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train and evaluate nothing: write index.md from what OUT already holds "
        "(the state of a long suite that is still running or was interrupted)",
    )


def run(args: argparse.Namespace) -> int:
    import logging
    import time

    from nestlearn.studies.reproduce import SUITES, run_reproduce

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    suite = SUITES[args.suite]
    models = [m for m in args.models.split(",") if m.strip()] or None
    t0 = time.perf_counter()
    try:
        path = run_reproduce(
            suite,
            args.out,
            data_dir=args.data_dir,
            models=models,
            stage=lambda s: print(f"{time.strftime('%H:%M:%S')} {s}", flush=True),
            compute=not args.report_only,
            gguf=args.gguf,
        )
    except ValueError as e:
        print(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to resume from {args.out}/cache")
        return 130
    print(f"\nreport: {path} ({time.perf_counter() - t0:.0f} s)")
    text = path.read_text(encoding="utf-8")
    if "## 8. Honest verdict" in text:
        print(text[text.index("## 8. Honest verdict") :])
    return 0
