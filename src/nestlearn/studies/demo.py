"""``nestlearn demo``: train a few presets on the embedded corpus at one budget, then compare.

Each preset is trained by :class:`nestlearn.train.Trainer` with the same overrides (steps, batch,
learning rate, validation every third of the run), scored on the validation and test splits,
and the runs are put side by side: a table (printed and written to ``demo.md``), one loss-curve
plot, and a text sample of the first model. Lines meant for a person go through ``say`` (the
CLI passes its rank-0 print), so this module prints nothing itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

DEMO_OVERRIDES = (
    "data.batch_size=16",
    "train.eval_tokens=32768",
    "schedule.warmup_steps=30",
    "optim.lr=3e-3",
)
TABLE_HEADERS = [
    "model",
    "params",
    "steps",
    "train time",
    "train tok/s",
    "val loss",
    "val ppl",
    "val bits/byte",
    "test ppl",
    "test bits/byte",
]


def demo_overrides(steps: int, extra: list[str]) -> list[str]:
    """The demo's config overrides for ``steps`` optimizer steps, then the user's ``extra``."""
    every = max(1, steps // 3)
    return [
        f"train.steps={steps}",
        f"train.eval_every={every}",
        f"train.ckpt_every={every}",
        *DEMO_OVERRIDES,
    ] + list(extra)


def run_demo(
    presets: list[str],
    *,
    steps: int,
    overrides: list[str],
    out: str | None,
    force: bool,
    say: Callable[[str], None],
) -> Path | None:
    """Train ``presets`` one after the other and report; returns the folder, or ``None`` when
    training was interrupted (the interrupted run can be resumed with ``nestlearn train``)."""
    from nestlearn.eval.samples import sample_text
    from nestlearn.train import Trainer, resolve_config
    from nestlearn.train.report import plot_losses
    from nestlearn.utils.tables import format_table

    t0 = time.perf_counter()
    all_overrides = demo_overrides(steps, overrides)
    cfgs = {name: resolve_config(name, None, all_overrides) for name in presets}  # fail fast
    root = Path(out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    first = cfgs[presets[0]]
    say(
        f"nestlearn demo: training {', '.join(presets)} on the embedded public-domain corpus, "
        f"each {first.train.steps} steps x {first.data.batch_size} x {first.data.seq_len} tokens "
        f"(tokenizer {first.data.tokenizer}); folder {root}"
    )
    rows, runs, trainers = [], {}, {}
    for name in presets:
        run_dir = root / name if len(presets) > 1 else root
        trainer = Trainer(cfgs[name], run_dir=run_dir, force=force)
        say(f"\n[{name}] {trainer.params:,} parameters; run folder: {run_dir}")
        result = trainer.fit()
        if result.interrupted:
            say(f"interrupted; resume with: nestlearn train --resume {run_dir}")
            return None
        test = trainer.evaluate_split("test")
        ev = result.final_eval
        tok_s = (
            result.steps
            * first.data.batch_size
            * first.data.seq_len
            / max(result.wall_time_s, 1e-9)
        )
        rows.append(
            [
                name,
                trainer.params,
                result.steps,
                f"{result.wall_time_s:.0f}s",
                f"{tok_s:,.0f}",
                ev["loss"],
                ev["ppl"],
                ev["bpb"],
                test["ppl"],
                test["bpb"],
            ]
        )
        runs[name], trainers[name] = run_dir, trainer
    png = plot_losses(
        runs,
        root / "loss_curves.png",
        title=" vs ".join(presets) + " on the nestlearn corpus (same data and token budget)",
    )
    table = format_table(TABLE_HEADERS, rows)
    say("")
    say(table)
    (root / "demo.md").write_text("# nestlearn demo\n\n```\n" + table + "\n```\n", encoding="utf-8")
    say(f"\nloss curves: {png}\ntable: {root / 'demo.md'}")
    name = presets[0]
    sample = sample_text(
        trainers[name].model, trainers[name].tokenizer, "The ", 300, 0.8, None, 0.95, 0, 1
    )
    say(f"\n{name} sample (temperature 0.8, top-p 0.95):\n{sample}\n")
    say(f"total wall time {time.perf_counter() - t0:.0f}s")
    return root
