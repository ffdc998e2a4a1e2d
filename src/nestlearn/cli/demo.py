"""``nestlearn demo``: the main job (:func:`nestlearn.studies.demo.run_demo`)."""

from __future__ import annotations

import argparse

from nestlearn.cli._common import EXIT_INTERRUPTED, UsageError, say

COMMAND = "demo"
HELP = "the main job: train Hope and Transformer++ on the embedded corpus, compare, plot"
DESCRIPTION = None


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--steps",
        type=int,
        default=150,
        help="optimizer steps per model (default 150 x 16 x 256 tokens: about 40 minutes for "
        "both models on 2 idle CPU cores, nearly all of it hope-tiny's)",
    )
    p.add_argument(
        "--models",
        default="hope-tiny,transformer-tiny",
        help="comma-separated presets trained at the same token budget (default "
        "hope-tiny,transformer-tiny, matched in parameter count)",
    )
    p.add_argument("--preset", default=None, help=argparse.SUPPRESS)  # old single-model flag
    p.add_argument("--out", default=None, help="folder (default runs/demo-<time>)")
    p.add_argument("--force", action="store_true", help="replace runs already in --out")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")


def run(args: argparse.Namespace) -> int:
    from nestlearn.studies.demo import run_demo

    presets = (
        [args.preset] if args.preset else [m.strip() for m in args.models.split(",") if m.strip()]
    )
    if not presets:
        raise UsageError("--models is empty; try --models hope-tiny,transformer-tiny")
    root = run_demo(
        presets,
        steps=args.steps,
        overrides=list(args.overrides),
        out=args.out,
        force=args.force,
        say=say,
    )
    return EXIT_INTERRUPTED if root is None else 0
