"""Continual translation of a novel language (CTNL analogue of arXiv 2512.24695 §9.1, Fig. 8).

Two constructed languages per seed (own vocabulary, word order and suffixes), each with grammar
notes, a dictionary and parallel sentences given in context; held-out sentences are translated
into English by greedy decoding and scored with chrF. Setting 1: each language alone. Setting 2:
language A, then B, then A again (forgetting). Methods: no material, ICL (the pretrained model)
and Hope-1/2/3 (SmolLM2-135M's MLPs stacked into CMS levels that learn from the material).

Writes OUT/results.md, OUT/results.json, OUT/ctnl.png and OUT/cells/ (one file per finished
seed and method, reused when the command is run again with the same settings).

Examples:
  nestlearn ctnl --out runs/ctnl
  nestlearn ctnl --out runs/ctnl --seeds 0,1 --levels 0,3 --threads 1
  nestlearn ctnl --out runs/ctnl-mine --checkpoint runs/my-transformer
See docs/continual.md, "Continual translation of a novel language".
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from nestlearn.cli._common import add_model_source_args, add_threads_arg, set_threads

COMMAND = "ctnl"
HELP = "continual translation of constructed languages learned in context: ICL vs Hope-1/2/3"
DESCRIPTION = __doc__


def ints(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; a clear error otherwise."""
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,1,2, got {text!r}"
        ) from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model options shared by ``ctnl`` and ``knowledge``."""
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    add_model_source_args(p)
    p.add_argument("--seeds", type=ints, default=[0], help="data seeds, e.g. 0,1 (default 0)")
    p.add_argument("--periods", type=ints, default=[64, 256, 1024],
                   help="CMS periods; Hope-k uses the first k, cyclic in depth")  # fmt: skip
    p.add_argument("--level-lr", type=float, default=0.1, help="Hope: CMS level learning rate")
    p.add_argument("--window", type=int, default=1024, help="attention context in tokens")
    add_threads_arg(p)


def load_model(args: argparse.Namespace):  # noqa: ANN201 - (model, tokenizer, source name)
    from nestlearn.cli.continual import _load_model

    model, tok = _load_model(args)
    return model, tok, args.checkpoint or args.gguf or args.pretrained


def add_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--levels", type=ints, default=[0, 1, 2, 3],
                   help="0 = ICL, k = Hope-k (default 0,1,2,3)")  # fmt: skip
    p.add_argument("--parallel", type=int, default=16, help="example pairs per language")
    p.add_argument("--test", type=int, default=12, help="held-out sentences per language")
    p.add_argument("--nouns", type=int, default=8, help="nouns per language")
    p.add_argument("--verbs", type=int, default=5, help="verbs per language")
    p.add_argument("--adjectives", type=int, default=4, help="adjectives per language")
    p.add_argument("--max-new", type=int, default=24, help="most tokens per translation")


def _say(text: str) -> None:
    print(text, flush=True)  # progress shows at once when the output goes to a file


def run_study(
    args: argparse.Namespace, make_config: Callable[[], Any], run_fn: Callable[..., dict]
) -> int:
    """The run of ``ctnl`` and ``knowledge``: build the study's config (``make_config``; a
    ``ValueError`` is printed and exits 2, before any model is loaded), set the threads, load the
    model and run the study (``run_fn``, e.g. ``run_ctnl``) into ``args.out``."""
    try:
        cfg = make_config()
    except ValueError as e:
        print(f"error: {e}")
        return 2
    set_threads(args.threads)
    model, tok, source = load_model(args)
    rep = run_fn(model, tok, args.out, cfg, source=source, progress=_say)
    print(f"report: {args.out}/results.md ({rep['wall_s_this_call']:.0f} s)")
    return 0


def run(args: argparse.Namespace) -> int:
    from nestlearn.studies.ctnl import CTNLConfig, _tasks, run_ctnl

    def make_config() -> CTNLConfig:
        cfg = CTNLConfig(
            seeds=args.seeds, levels=args.levels, periods=args.periods, level_lr=args.level_lr,
            window=args.window, n_parallel=args.parallel, n_test=args.test, n_nouns=args.nouns,
            n_verbs=args.verbs, n_adjectives=args.adjectives, max_new=args.max_new,
        )  # fmt: skip
        for s in cfg.seeds:  # generator limits, before loading any model
            _tasks(cfg, s)
        return cfg

    return run_study(args, make_config, run_ctnl)
