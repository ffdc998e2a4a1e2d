"""Continual learning benchmarks (arXiv 2512.24695 §9.1): class-incremental CLINC150 / Banking77
with a pretrained model, and domain-stream forgetting of tiny models trained from scratch.

  clinc, banking: ICL, EWC and Hope-Attention (ad-hoc level stacking, CMS levels learning in
      context) on SmolLM2-135M (or --checkpoint / --gguf). Writes OUT/<benchmark>-<method>.json,
      OUT/class_incremental.md and OUT/<benchmark>.png; finished (benchmark, method) pairs with
      the same settings are reused, so an interrupted run resumes.
  domains: hope-tiny, titans-tiny, transformer-tiny trained online on Austen, then Shakespeare,
      then State of the Union; the per-domain perplexity matrix after each phase. Writes
      OUT/domains.{json,md,png}.

Examples:
  nestlearn continual --benchmark clinc --out runs/continual
  nestlearn continual --benchmark banking --method icl,hope --data-dir ../shared/datasets --out runs/cl
  nestlearn continual --benchmark domains --out runs/continual --threads 1
See docs/continual.md for the protocol and the measured results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nestlearn.cli._common import (
    add_model_source_args,
    add_threads_arg,
    load_model_source,
    set_threads,
)

COMMAND = "continual"
HELP = "continual learning: class-incremental CLINC/Banking (ICL/EWC/Hope), domain forgetting"
DESCRIPTION = __doc__


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--benchmark", default="clinc", help="clinc, banking or domains (comma-separate several)"
    )
    p.add_argument("--method", default="icl,ewc,hope", help="clinc/banking: icl, ewc, hope")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    add_threads_arg(p)
    g = p.add_argument_group("class-incremental (clinc, banking)")
    add_model_source_args(g)
    g.add_argument(
        "--data-dir", metavar="DIR", help="datasets folder (clinc150/, banking77/); default "
        "$NESTLEARN_DATA_DIR",
    )  # fmt: skip
    g.add_argument("--split", default="test", choices=["test", "val"], help="evaluation split")
    g.add_argument("--shots", type=int, default=3, help="demonstrations per class (default 3)")
    g.add_argument(
        "--eval-per-class", type=int, default=1, help="test utterances per class (default 1)"
    )
    g.add_argument("--window", type=int, default=1024, help="attention context in tokens")
    g.add_argument("--tasks", type=int, default=0, help="keep the first N tasks (0 = all)")
    g.add_argument("--level-lr", type=float, default=1.0, help="hope: CMS level learning rate")
    g.add_argument("--periods", default="64,256,1024", help="hope: CMS periods, cyclic in depth")
    g.add_argument("--ewc-lambda", type=float, default=1e4, help="ewc: penalty weight")
    g.add_argument("--ewc-lr", type=float, default=3e-5, help="ewc: AdamW learning rate")
    g.add_argument("--ewc-epochs", type=int, default=2, help="ewc: passes over each task")
    d = p.add_argument_group("domain stream (domains)")
    d.add_argument("--models", default="hope-tiny,titans-tiny,transformer-tiny", help="presets")
    d.add_argument("--domains", default="austen,shakespeare,sotu", help="phases, in order")
    d.add_argument("--steps-per-phase", type=int, default=60, help="optimizer steps per domain")
    d.add_argument("--eval-tokens", type=int, default=16384, help="held-out tokens per domain")


def _classify(args: argparse.Namespace, bench: str, methods: list[str]) -> list:
    import dataclasses

    from nestlearn.eval.zeroshot import resolve_data_dir
    from nestlearn.studies.continual.classify import (
        load_benchmark,
        load_result,
        run_class_incremental,
        save_result,
    )

    ddir = resolve_data_dir(args.data_dir)
    data = load_benchmark(bench, ddir, test_split=args.split, seed=args.seed)
    periods = tuple(int(x) for x in _list(args.periods))
    kw = dict(
        shots=args.shots, eval_per_class=args.eval_per_class, window=args.window,
        seed=args.seed, num_tasks=args.tasks or None, periods=periods, level_lr=args.level_lr,
        ewc_lr=args.ewc_lr, ewc_epochs=args.ewc_epochs, ewc_lambda=args.ewc_lambda,
    )  # fmt: skip
    model = tok = None
    results = []
    out = Path(args.out)
    # the settings a finished result must match to be reused (JSON-shaped: tuples as lists)
    want = {"source": args.checkpoint or args.gguf or args.pretrained, "split": args.split,
            "tasks": args.tasks, **kw, "periods": list(periods)}  # fmt: skip
    for method in methods:
        path = out / f"{bench}-{method}.json"
        if path.is_file():
            old = load_result(path)
            if old.settings.get("run") == want:
                print(f"{bench}/{method}: reusing {path}")
                results.append(old)
                continue
        if model is None:
            model, tok = _load_model(args)
        res = run_class_incremental(model, tok, data, method, progress=print, **kw)
        res = dataclasses.replace(res, settings={**res.settings, "run": want})
        save_result(res, path)
        results.append(res)
    return results


def _load_model(args: argparse.Namespace):  # noqa: ANN202 - (model, tokenizer)
    needs = (
        "the class-incremental methods need a 'transformer' (Transformer++) checkpoint, whose "
        "MLPs 'hope' stacks into CMS levels"
    )
    return load_model_source(args, needs, SystemExit)


def run(args: argparse.Namespace) -> int:
    import torch

    from nestlearn.studies.continual.classify import BENCHMARKS, METHODS
    from nestlearn.studies.continual.report import write_report

    set_threads(args.threads)
    benches = _list(args.benchmark)
    known = (*BENCHMARKS, "domains")
    bad = [b for b in benches if b not in known]
    if bad or not benches:
        print(f"error: unknown benchmark {bad or args.benchmark!r}; choose from {', '.join(known)}")
        return 2
    methods = _list(args.method)
    badm = [m for m in methods if m not in METHODS]
    if badm or not methods:
        print(f"error: unknown method {badm or args.method!r}; choose from {', '.join(METHODS)}")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for bench in benches:
        if bench == "domains":
            from nestlearn.studies.continual.domains import run_domains

            run_domains(
                out, models=_list(args.models), domains=_list(args.domains),
                steps_per_phase=args.steps_per_phase, eval_tokens=args.eval_tokens,
                seed=args.seed, threads=args.threads or torch.get_num_threads(), progress=None,  # it logs each phase
            )  # fmt: skip
            print(f"domain stream: {out / 'domains.md'}")
            continue
        try:
            results += _classify(args, bench, methods)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}")
            return 2
        path = write_report(results, out)
        print(f"class-incremental report: {path}")
    return 0
