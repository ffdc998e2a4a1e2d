"""``nestlearn train``: train from a preset or a YAML recipe (:class:`nestlearn.train.Trainer`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nestlearn.cli._common import EXIT_INTERRUPTED, UsageError, say

COMMAND = "train"
HELP = "train a model"
DESCRIPTION = "Train from a preset or a YAML recipe, with dotted overrides (e.g. optim.lr=3e-4 train.steps=500)."


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="model preset (see `nestlearn list`)")
    p.add_argument(
        "--config", help="YAML run recipe (sections model, optim, data, schedule, train)"
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its newest good checkpoint",
    )
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/<name>-<time>)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a run already in --out (its config, metrics and checkpoints)",
    )
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def run(args: argparse.Namespace) -> int:
    from nestlearn.train import Trainer, resolve_config
    from nestlearn.train.rundir import resume_config

    ckpt = None
    if args.resume:
        if args.preset or args.config:
            raise UsageError(
                "--resume takes the run's saved config; drop --preset/--config (overrides are allowed)"
            )
        if args.force:
            raise UsageError("--resume continues a run and --force replaces it; give one of them")
        run_dir = Path(args.resume)
        if args.out and Path(args.out).resolve() != run_dir.resolve():
            raise UsageError(f"--out {args.out} and --resume {args.resume} name different folders")
        cfg, ckpt = resume_config(run_dir, args.overrides)
    else:
        if not args.preset and not args.config:
            raise UsageError(
                "give --preset NAME or --config FILE.yaml (`nestlearn list` shows presets)"
            )
        cfg = resolve_config(args.preset, args.config, args.overrides)
        run_dir = Path(args.out) if args.out else None
    from nestlearn.train.distributed import cleanup_distributed

    try:
        trainer = Trainer(
            cfg, run_dir=run_dir, resume=bool(args.resume), force=args.force, checkpoint=ckpt
        )
        if trainer.finished:
            say(
                f"{trainer.run_dir} is already finished (step {trainer.start_step} of "
                f"train.steps={cfg.train.steps}); nothing to do. To train further, raise "
                f"train.steps, e.g. nestlearn train --resume {trainer.run_dir} "
                f"train.steps={2 * max(cfg.train.steps, trainer.start_step)}"
            )
            return 0
        say(
            f"run folder: {trainer.run_dir}  ({trainer.params:,} parameters, "
            f"{trainer.dist.world_size} process(es), device {trainer.device})"
        )
        result = trainer.fit()
    finally:
        cleanup_distributed()
    if result.interrupted:
        say(
            f"interrupted at step {result.steps}; resume with: nestlearn train --resume {trainer.run_dir}"
        )
        return EXIT_INTERRUPTED
    ev = result.final_eval
    say(
        f"done: {result.steps} steps in {result.wall_time_s:.0f}s; validation loss {ev['loss']:.4f}, "
        f"perplexity {ev['ppl']:.2f}, bits/byte {ev['bpb']:.4f}"
    )
    return 0
