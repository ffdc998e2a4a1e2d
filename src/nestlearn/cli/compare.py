"""Train several models on the same data and token budget; write one table and one plot.

Every model gets the same tokenizer, corpus, batch, sequence length, optimizer, steps and seeds.
A family name X means its preset X-tiny; any preset name works too. Without --models, every
family that has a -tiny preset is compared. Writes DIR/compare.md (model, params, validation
loss / perplexity / bits-per-byte, training tokens/s, wall time; mean ± std over seeds),
DIR/compare.json, DIR/compare.png and one run folder per model and seed. Rerunning with the same
settings reuses finished runs (add models or seeds cheaply); --rerun trains everything again.

Examples:
  nestlearn compare --models transformer,deltanet,retnet --tokens 2000000 --out runs/cmp
  nestlearn compare --models transformer,gated-deltanet --tokens 500000 --seeds 3 optim.lr=2e-3
"""

from __future__ import annotations

import argparse

COMMAND = "compare"
HELP = "train several models on the same data and token budget; one table and one plot"
DESCRIPTION = __doc__


def add_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--models",
        default="",
        metavar="A,B,...",
        help="families (X means preset X-tiny) or presets; default: every family with a -tiny preset",
    )
    p.add_argument(
        "--tokens",
        type=int,
        required=True,
        metavar="N",
        help="training tokens per run; steps = N // (batch size x sequence length)",
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds per model (default 1)")
    p.add_argument(
        "--out", default=None, metavar="DIR", help="folder (default runs/compare-<time>)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step (default 16)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument(
        "--rerun", action="store_true", help="train again even where a finished run matches"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="config overrides applied to every model (e.g. optim.lr=2e-3 train.threads=2)",
    )


def run(args: argparse.Namespace) -> int:
    import time

    from nestlearn.studies.compare import (
        HEADERS,
        available_models,
        plan_runs,
        resolve_models,
        run_compare,
        summarize,
    )
    from nestlearn.utils.tables import markdown_table

    names = [n for n in args.models.split(",") if n.strip()] or available_models()
    models = resolve_models(names)  # unknown names fail here, before any training
    out = args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}"
    runs = plan_runs(
        models,
        tokens=args.tokens,
        out=out,
        seeds=args.seeds,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        overrides=args.overrides,
    )
    cfg = runs[0].cfg
    print(
        f"nestlearn compare: {len(models)} model(s) x {args.seeds} seed(s), "
        f"{cfg.train.steps} steps x {cfg.data.batch_size} x {cfg.data.seq_len} tokens each "
        f"({cfg.train.steps * cfg.data.batch_size * cfg.data.seq_len:,} tokens); out: {out}",
        flush=True,
    )

    def progress(r) -> None:  # noqa: ANN001
        res = r.result
        if "val_loss" in res:
            print(
                f"  {r.model} seed {r.seed}: val loss {res['val_loss']:.4f}, "
                f"bits/byte {res['val_bpb']:.4f}, {res['wall_time_s']:.0f}s",
                flush=True,
            )
        else:
            print(f"  {r.model} seed {r.seed}: {res.get('diverged', 'no result')}", flush=True)

    run_compare(runs, out, reuse=not args.rerun, on_result=progress)
    print()
    print(markdown_table(HEADERS, summarize(runs)))
    print(f"\ntable: {out}/compare.md   plot: {out}/compare.png")
    return 0
