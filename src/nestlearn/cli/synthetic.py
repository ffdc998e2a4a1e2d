"""Train small models on synthetic tasks and report accuracy: MQAR, MAD, formal languages, S-NIAH.

Each (task, family) pair trains a fresh model with the task's own vocabulary on CPU and prints
one table row: accuracy at the scored positions (MQAR, MAD) or Bin0/Bin1 string accuracy
(formal languages). The S-NIAH tasks given train one model per family on their mixture (at 512
tokens) and print a row per task: the fraction of needles retrieved at each test length (512 /
2K / 8K by default). See docs/evaluation_synthetic.md.

Examples:
  nestlearn synthetic --task mqar --family transformer
  nestlearn synthetic --task all-mad --steps 800 --out results/mad
  nestlearn synthetic --task parity,anbn --family transformer --steps 1000
  nestlearn synthetic --task mqar --set vocab_size=8192 seq_len=64 num_kv_pairs=4 --steps 2000
  nestlearn synthetic --task all-sniah --family transformer,titans --set test_lengths=512,2k,8k
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

COMMAND = "synthetic"
HELP = "train small models on MQAR, MAD and formal-language tasks; report accuracy"
DESCRIPTION = __doc__


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        required=True,
        help="comma-separated: mqar, mqar_hard, in_context_recall, noisy_in_context_recall, "
        "fuzzy_in_context_recall, selective_copying, compression, memorization, parity, "
        "aa_star, abab_star, anbn, anbncn, shuffle2, s_niah_1, s_niah_2, s_niah_3; or all-mad, "
        "all-formal, all-sniah, all (MQAR, MAD and formal)",
    )
    p.add_argument("--family", default="transformer", help="comma-separated model families")
    p.add_argument("--dim", type=int, help="model width (default per task: 64 or 128)")
    p.add_argument("--layers", type=int, help="blocks (default 2)")
    p.add_argument("--heads", type=int, help="heads (default per task)")
    p.add_argument("--steps", type=int, help="optimizer steps (default per task: 400-500)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default 32)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--optim", help="optimizer: adamw (default), muon, m3, ... (nestlearn.optim)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay on matrices (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, batches and data")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--mixer", nargs="*", default=[], metavar="KEY=VALUE", help="family options")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="task settings")
    p.add_argument("--num-train", type=int, help="training examples (strings) to generate")
    p.add_argument("--num-test", type=int, help="test examples (strings per bin)")
    p.add_argument("--out", metavar="DIR", help="write results.json and table.txt here")
    p.add_argument("--json", action="store_true", help="print one JSON line per run")


def _pairs(items: list[str], what: str) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} entries look like key=value, got {item!r}")
        out[key] = yaml.safe_load(raw)
    return out


def _expand(spec: str) -> list[str]:
    from nestlearn.data.synthetic.formal import FORMAL_LANGUAGES
    from nestlearn.data.synthetic.sniah import SNIAH_TASKS
    from nestlearn.studies.recall import TOKEN_TASKS

    groups = {
        "all-mad": [t for t in TOKEN_TASKS if not t.startswith("mqar")],
        "all-formal": list(FORMAL_LANGUAGES),
        "all-sniah": list(SNIAH_TASKS),
        "all": [*TOKEN_TASKS, *FORMAL_LANGUAGES],
    }
    tasks: list[str] = []
    for t in (x.strip() for x in spec.split(",")):
        if not t:
            continue
        tasks += groups.get(t, [t])
    known = set(TOKEN_TASKS) | set(FORMAL_LANGUAGES) | set(SNIAH_TASKS)
    bad = [t for t in tasks if t not in known]
    if bad or not tasks:
        raise ValueError(
            f"unknown --task {bad or spec!r}; choose from {', '.join(sorted(known))}, "
            "all-mad, all-formal, all-sniah or all"
        )
    return tasks


def _sniah_settings(settings: dict) -> dict:
    """``--set`` keys of the S-NIAH recipe: ``train_length``, ``test_lengths`` (``512,2k,8k``
    or a list) and ``chunk`` (streaming window; default the training length)."""
    from nestlearn.data.synthetic.common import parse_lengths

    allowed = {"train_length", "test_lengths", "chunk"}
    bad = sorted(set(settings) - allowed)
    if bad:
        raise ValueError(f"--set {bad} do not apply to S-NIAH tasks; use {sorted(allowed)}")
    out = dict(settings)
    lengths = out.get("test_lengths")
    if isinstance(lengths, (str, int)):
        out["test_lengths"] = parse_lengths(str(lengths))
    return out


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from nestlearn.data.synthetic.formal import FORMAL_LANGUAGES
    from nestlearn.data.synthetic.sniah import SNIAH_TASKS
    from nestlearn.models import FAMILIES
    from nestlearn.studies.formal import train_formal
    from nestlearn.studies.recall import build_token_task, default_recipe, train_token_task
    from nestlearn.studies.sniah import train_sniah
    from nestlearn.utils.tables import format_table

    tasks = _expand(args.task)
    families = [f.strip() for f in args.family.split(",") if f.strip()]
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise ValueError(
            f"unknown --family {bad or args.family!r}; choose from {', '.join(sorted(FAMILIES))}"
        )
    mixer = _pairs(args.mixer, "--mixer")
    settings = _pairs(args.set, "--set")
    rows, results, sniah_rows = [], [], []
    # the S-NIAH tasks train one model per family on their mixture (eval.sniah)
    sniah = tuple(t for t in tasks if t in SNIAH_TASKS)
    sniah_kw = _sniah_settings(settings) if sniah else {}
    units: list = [t for t in tasks if t not in SNIAH_TASKS] + ([sniah] if sniah else [])
    for task in units:
        token_task = None
        if task in FORMAL_LANGUAGES and settings:
            logger.warning(
                "--set %s does not apply to %s (formal languages have fixed bins)", settings, task
            )
        if task not in FORMAL_LANGUAGES and task != sniah:
            extra = {
                k: v for k, v in (("num_train", args.num_train), ("num_test", args.num_test)) if v
            }
            token_task = build_token_task(task, seed=args.seed, **settings, **extra)
        for family in families:
            cfg = default_recipe(
                task[0] if task == sniah else task,
                family=family,
                dim=args.dim,
                n_layers=args.layers,
                n_heads=args.heads,
                steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                optimizer=args.optim,
                weight_decay=args.weight_decay,
                seed=args.seed,
                threads=args.threads,
                mixer=mixer,
            )
            label = "+".join(task) if task == sniah else task
            with tqdm(total=cfg.steps, desc=f"{label}/{family}", disable=None, leave=False) as bar:

                def tick(step: int, loss: float, bar=bar) -> None:  # noqa: ANN001
                    bar.update(1)
                    if step % 20 == 0:
                        bar.set_postfix(loss=f"{loss:.3f}")

                if task == sniah:
                    res = train_sniah(
                        list(task), cfg, num_test=args.num_test or 100, data_seed=args.seed,
                        progress=tick, **sniah_kw,
                    )  # fmt: skip
                elif token_task is not None:
                    res = train_token_task(token_task, cfg, progress=tick)
                    acc, b0, b1 = 100 * res.accuracy, "-", "-"
                else:
                    res = train_formal(
                        task,
                        cfg,
                        num_train=args.num_train or 10_000,
                        num_test=args.num_test or 500,
                        data_seed=args.seed,
                        progress=tick,
                    )
                    acc, b0, b1 = "-", 100 * res.bin0, 100 * res.bin1
            record = res.to_dict()
            record.pop("losses")
            record["final_loss"] = res.losses[-1]
            results.append(record)
            if task == sniah:
                for t in res.tasks:
                    sniah_rows.append(
                        [t, family, res.params, res.steps,
                         *(100 * a for a in res.accuracy[t].values()), res.losses[-1],
                         res.train_time_s, res.eval_time_s]
                    )  # fmt: skip
                sniah_lengths = list(res.accuracy[res.tasks[0]])
            else:
                rows.append(
                    [task, family, res.params, res.steps, acc, b0, b1, res.losses[-1],
                     res.wall_time_s]
                )  # fmt: skip
            if args.json:
                print(json.dumps(record), flush=True)
    tables = []
    if rows:
        tables.append(
            format_table(
                ["task", "family", "params", "steps", "accuracy %", "Bin0 %", "Bin1 %",
                 "final loss", "time s"],
                rows,
            )
        )  # fmt: skip
    if sniah_rows:
        from nestlearn.eval.niah import length_label

        tables.append(
            format_table(
                ["task", "family", "params", "steps",
                 *(f"@{length_label(n)} %" for n in sniah_lengths), "final loss", "train s",
                 "test s"],
                sniah_rows,
            )
            + "\n(S-NIAH: needles retrieved whole, in percent, at each test length; one model "
            "per family on the tasks' mixture: params, steps, loss and times are the run's)"
        )  # fmt: skip
    table = "\n\n".join(tables)
    if not args.json:
        print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        (out / "table.txt").write_text(table + "\n", encoding="utf-8")
        if not args.json:
            print(f"results in {out}")
    return 0
