"""M3 against AdamW and Muon on a small vision transformer (the paper's Fig. 11 / Fig. 12, §9.7,
at CPU size) on scikit-learn's digits (8 x 8 grey images, 10 classes; ships inside the
scikit-learn wheel: pip install "nestlearn[vision]").

Each optimizer trains seed 0 at every learning rate of its grid, the rate with the lowest final
validation loss is kept and trained with the other seeds; then optimizer.step() alone is timed
for each optimizer on the same model and gradients. Writes DIR/results.md (table: optimizer,
chosen lr, final train loss, test loss, test accuracy as mean ± std over seeds, median step
time), DIR/results.json, DIR/curves.png (train and test loss against the step) and one file per
finished run under DIR/cells/. Running again with the same settings reuses every finished run
(an interrupted run resumes where it stopped); --rerun trains everything again.

Examples:
  nestlearn vit-optim --out runs/vit-optim
  nestlearn vit-optim --out runs/vit-optim --seeds 5 --steps 1000
  nestlearn vit-optim --out runs/vit-small --optimizers muon,m3 --lrs 3e-3,1e-2 --seeds 1
  nestlearn vit-optim --out runs/vit-optim --lrs-for m3=1e-2,3e-2,1e-1
"""

from __future__ import annotations

import argparse

from nestlearn.cli._common import UsageError, say

COMMAND = "vit-optim"
HELP = "M3 vs AdamW vs Muon on a small ViT (digits): tuned lr, seeds, step time; table and plot"
DESCRIPTION = __doc__


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(
            f"{what} must be comma-separated numbers such as 1e-3,3e-3, got {text!r}"
        ) from None
    if not vals:
        raise UsageError(f"{what} is empty; give comma-separated numbers such as 1e-3,3e-3")
    return vals


def add_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (reused on a rerun)")
    p.add_argument("--optimizers", default="adamw,muon,m3", metavar="A,B",
                   help="which of adamw, muon, m3 (default all three)")  # fmt: skip
    p.add_argument("--lrs", default=None, metavar="LR,LR",
                   help="learning-rate grid for every optimizer (default 1e-3,3e-3,1e-2,3e-2,1e-1)")  # fmt: skip
    p.add_argument("--lrs-for", action="append", default=[], metavar="OPT=LR,LR",
                   help="grid for one optimizer (repeatable), e.g. m3=1e-2,3e-2")  # fmt: skip
    p.add_argument("--seeds", type=int, default=3, help="seeds at the chosen lr (default 3)")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps per run (default 400)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--eval-every", type=int, default=20,
                   help="steps between points of the curves (default 20)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=None,
                   help="linear warm-up steps (default 5%% of --steps)")  # fmt: skip
    p.add_argument("--weight-decay", type=float, default=0.05, help="decoupled (default 0.05)")
    p.add_argument("--fallback-lr", type=float, default=None,
                   help="lr of Muon's and M3's AdamW fallback (embeddings, head, vectors); "
                        "default: the optimizer's own lr")  # fmt: skip
    p.add_argument("--m3-slow-every", type=int, default=20,
                   help="M3's slow-momentum period f in steps (default 20)")  # fmt: skip
    p.add_argument("--m3-alpha", type=float, default=0.5, help="M3's slow weight (default 0.5)")
    p.add_argument("--ns-dtype", default="float32",
                   choices=["auto", "param", "bfloat16", "float32", "float64"],
                   help="Newton–Schulz precision for Muon and M3 (default float32: on CPUs "
                        "without AVX512-BF16, bfloat16 matmuls are slower)")  # fmt: skip
    p.add_argument("--dim", type=int, default=64, help="ViT width (default 64)")
    p.add_argument("--depth", type=int, default=3, help="ViT blocks (default 3)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--patch", type=int, default=2, choices=[1, 2, 4, 8],
                   help="patch side in pixels (default 2: 16 patches)")  # fmt: skip
    p.add_argument("--pool", default="cls", choices=["cls", "mean"], help="default cls")
    p.add_argument("--timing-widths", default=None, metavar="W,W",
                   help="widths at which optimizer.step() is timed (default: --dim and 4x --dim)")  # fmt: skip
    p.add_argument("--timing-steps", type=int, default=100,
                   help="timed rounds per width (default 100; 0 skips the timing)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: one per core other processes leave free)")  # fmt: skip
    p.add_argument("--rerun", action="store_true", help="train every run again")


def settings_from_args(args: argparse.Namespace):  # noqa: ANN201
    """The :class:`StudySettings` the command line asks for; bad values raise UsageError."""
    from nestlearn.studies.vit_optim import StudySettings, TrainSettings, ViTConfig

    optimizers = tuple(n.strip() for n in args.optimizers.split(",") if n.strip())
    grids: dict[str, tuple[float, ...]] = {}
    if args.lrs is not None:
        grids = {n: _floats(args.lrs, "--lrs") for n in optimizers}
    for item in args.lrs_for:
        name, sep, vals = item.partition("=")
        if not sep:
            raise UsageError(f"--lrs-for takes OPT=LR,LR (e.g. m3=1e-2,3e-2), got {item!r}")
        grids[name.strip()] = _floats(vals, f"--lrs-for {name.strip()}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    try:
        vit = ViTConfig(patch=args.patch, dim=args.dim, depth=args.depth, heads=args.heads,
                        pool=args.pool)  # fmt: skip
        warmup = args.warmup if args.warmup is not None else args.steps // 20
        train = TrainSettings(
            vit=vit, steps=args.steps, batch_size=args.batch_size, eval_every=args.eval_every,
            warmup=warmup, weight_decay=args.weight_decay, fallback_lr=args.fallback_lr,
            m3_slow_every=args.m3_slow_every, m3_alpha=args.m3_alpha, ns_dtype=args.ns_dtype,
        )  # fmt: skip
        widths = (_floats(args.timing_widths, "--timing-widths") if args.timing_widths
                  else (args.dim, 4 * args.dim))  # fmt: skip
        if any(w != int(w) for w in widths):
            raise UsageError(f"--timing-widths must be whole numbers, got {args.timing_widths}")
        return StudySettings(train=train, optimizers=optimizers, grids=grids, seeds=args.seeds,
                             timing_widths=tuple(int(w) for w in widths),
                             timing_steps=args.timing_steps)  # fmt: skip
    except ValueError as e:
        raise UsageError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    s = settings_from_args(args)  # every bad option fails here, before any work
    try:
        from nestlearn.data.digits import load_digits_split

        load_digits_split(seed=s.split_seed)
    except ImportError as e:
        raise UsageError(str(e)) from None
    from nestlearn.studies.vit_optim import run_study
    from nestlearn.studies.vit_optim.report import markdown

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    n_runs = sum(len(s.grid(n)) + s.seeds - 1 for n in s.optimizers)
    say(f"nestlearn vit-optim: {', '.join(s.optimizers)}; {n_runs} runs of {s.train.steps} steps "
        f"x {s.train.batch_size} images; {torch.get_num_threads()} thread(s); out: {args.out}")  # fmt: skip
    t0 = time.perf_counter()
    results = run_study(s, args.out, reuse=not args.rerun, on_event=say)
    say("")
    say(markdown(results))
    say(f"wall time {time.perf_counter() - t0:.0f} s; table: {args.out}/results.md   "
        f"plot: {args.out}/curves.png")  # fmt: skip
    return 0
