"""Train several models on the same data and token budget, then tabulate and plot them.

This is ``nestlearn compare``: the paper's comparison protocol (Nested Learning, arXiv
2512.24695, Table 2: every baseline trained on the same tokens with the same recipe) scaled down
to a budget that fits a CPU. Every model gets the same tokenizer, corpus, batch size, sequence
length, optimizer settings, number of steps and seeds; only the model differs.

Model names are presets or families; a family ``X`` means its preset ``X-tiny``. The choices are
read from the registries when the command runs, so any family that registers a ``-tiny`` preset
(``hope``, ``hope-attention``, ``titans``, ...) is comparable with no change here; with no
``models`` given, every family that has one is compared.

Outputs under ``out``: one run folder per model and seed (``<model>/seed<k>``, a normal
``nestlearn train`` run folder with metrics, config and final checkpoint), ``compare.md`` (the
table, mean ± std over seeds), ``compare.json`` (every run's numbers) and ``compare.png``
(training and validation loss of each model's first seed).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nestlearn.models import FAMILIES, PRESETS
from nestlearn.train.config import ConfigError, TrainConfig, parse_override, resolve_config
from nestlearn.train.guards import TrainingStopped
from nestlearn.utils.tables import markdown_table

logger = logging.getLogger(__name__)

__all__ = [
    "CompareRun",
    "available_models",
    "plan_runs",
    "resolve_models",
    "run_compare",
    "summarize",
]

HEADERS = ["model", "params", "val loss", "val ppl", "bits/byte", "train tok/s", "wall time"]
RESULT_FILE = "compare_result.json"
"""Written in each run folder when the run ends; a later compare with the same config reuses it."""


@dataclass
class CompareRun:
    """One (model, seed) training run of a comparison."""

    model: str
    """Preset name (the table's row label)."""
    seed: int
    cfg: TrainConfig
    run_dir: Path
    result: dict[str, Any] = field(default_factory=dict)
    """Filled after training: params, val loss/ppl/bpb, train tok/s, wall time, steps."""
    planned: dict[str, Any] = field(default_factory=dict)
    """The config as planned (the trainer later fills in e.g. the vocabulary size); a finished
    run folder is reused only when its saved plan equals this one."""

    def __post_init__(self) -> None:
        if not self.planned:
            self.planned = _comparable(self.cfg)


def available_models() -> list[str]:
    """Families with a ``<family>-tiny`` preset: the default lineup, Transformer++ first (the
    reference row), then the others in registration order."""
    fams = [f for f in FAMILIES if f"{f}-tiny" in PRESETS]
    return sorted(fams, key=lambda f: f != "transformer")


def resolve_models(names: Sequence[str]) -> list[str]:
    """Map family or preset names to preset names; unknown names fail listing the choices.

    A name that is both (none today) resolves as the preset. Duplicates are kept once.
    """
    out: list[str] = []
    bad = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in PRESETS:
            preset = name
        elif f"{name}-tiny" in PRESETS:
            preset = f"{name}-tiny"
        else:
            bad.append(name)
            continue
        if preset not in out:
            out.append(preset)
    if bad:
        fams = ", ".join(available_models())
        raise ValueError(
            f"unknown model(s) {', '.join(repr(b) for b in bad)}; choose families ({fams}) "
            f"or presets ({', '.join(sorted(PRESETS))})"
        )
    if not out:
        raise ValueError("no models given; pass e.g. --models transformer,deltanet")
    return out


def plan_runs(
    models: Sequence[str],
    *,
    tokens: int,
    out: str | Path,
    seeds: int = 1,
    batch_size: int = 16,
    seq_len: int = 256,
    overrides: Sequence[str] = (),
) -> list[CompareRun]:
    """Resolve and validate every run's :class:`TrainConfig` before anything trains.

    Shared settings, lowest precedence first: the preset; ``data.batch_size``/``data.seq_len``;
    budget-derived ``train.steps = tokens // (batch_size * seq_len)``, ``schedule.warmup_steps``
    (a tenth of the steps, at most 50), ``train.eval_every`` (four evaluations), end-only
    checkpoints; then the user's ``overrides`` (``key.sub=value``, applied to every model).
    ``train.steps`` cannot be overridden: the budget is ``tokens``.
    """
    if tokens <= 0:
        raise ValueError(f"--tokens must be positive, got {tokens}")
    if seeds <= 0:
        raise ValueError(f"--seeds must be positive, got {seeds}")
    user_keys = {".".join(parse_override(o)[0]) for o in overrides}
    if "train.steps" in user_keys:
        raise ValueError("set the budget with --tokens, not train.steps")
    base = [f"data.batch_size={batch_size}", f"data.seq_len={seq_len}"]
    probe = resolve_config(models[0], None, base + list(overrides))
    B, T = probe.data.batch_size, probe.data.seq_len
    steps = tokens // (B * T)
    if steps < 1:
        raise ValueError(
            f"--tokens {tokens} is less than one batch ({B} x {T} = {B * T} tokens); raise "
            "--tokens or lower --batch-size / --seq-len"
        )
    auto = [
        f"train.steps={steps}",
        f"schedule.warmup_steps={min(50, max(1, steps // 10))}",
        f"train.eval_every={max(1, steps // 4)}",
        "train.ckpt_every=0",
        "train.keep_last=1",
    ]
    runs = []
    out = Path(out)
    for name in models:
        for k in range(seeds):
            try:
                cfg = resolve_config(name, None, base + auto + list(overrides))
            except ConfigError as e:
                raise ValueError(f"{name}: {e}") from e
            cfg.train.seed += k
            cfg.train.name = name
            try:
                cfg.check()
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from e
            runs.append(CompareRun(name, cfg.train.seed, cfg, out / name / f"seed{cfg.train.seed}"))
    return runs


def _data_key(cfg: TrainConfig) -> tuple:
    d = cfg.data
    return (d.tokenizer, d.train, d.val, d.val_fraction)


def _median_tok_s(run_dir: Path) -> float:
    """Median training tokens/s over the logged steps, skipping step 1 (warm-up)."""
    from nestlearn.train.report import read_metrics

    train, _ = read_metrics(run_dir / "metrics.jsonl")
    rates = [r["tokens_per_s"] for r in train if "tokens_per_s" in r]
    if len(rates) > 1:
        rates = rates[1:]
    return statistics.median(rates) if rates else float("nan")


def _train_one(run: CompareRun, data: tuple | None) -> dict[str, Any]:
    from nestlearn.train import Trainer

    # the folder holds no finished result for this config (finished_result said so): a stale
    # or cut-off run there is replaced, never mixed with this one
    trainer = Trainer(run.cfg, run_dir=run.run_dir, data=data, force=True)
    result = trainer.fit()
    if result.interrupted:
        raise KeyboardInterrupt
    ev = result.final_eval
    return {
        "model": run.model,
        "family": run.cfg.model.family,
        "seed": run.seed,
        "params": result.params,
        "steps": result.steps,
        "tokens": result.steps * run.cfg.data.batch_size * run.cfg.data.seq_len,
        "val_loss": ev["loss"],
        "val_ppl": ev["ppl"],
        "val_bpb": ev["bpb"],
        "train_tok_s": _median_tok_s(run.run_dir),
        "wall_time_s": result.wall_time_s,
    }


def finished_result(run: CompareRun) -> dict[str, Any] | None:
    """The saved result of ``run`` if its folder holds one for the same config, else None."""
    path = run.run_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not same_config(run.planned, saved.get("config")):
        return None
    return saved.get("result")


def same_config(planned: dict[str, Any], saved: Any) -> bool:
    """``saved`` (a run's stored config) equals ``planned``, where a key the stored config lacks
    counts as that field's default: a config field added after the run (with a default that
    keeps the old behaviour) must not make every finished run look stale and retrain it."""
    if not isinstance(saved, dict):
        return False
    filled = copy.deepcopy(saved)
    for section, defaults in _comparable(TrainConfig()).items():
        if isinstance(defaults, dict) and isinstance(filled.get(section), dict):
            for key, value in defaults.items():
                filled[section].setdefault(key, value)
    return filled == planned


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    d["optim"]["betas"] = list(d["optim"]["betas"])
    d["train"].pop("progress", None)
    return json.loads(json.dumps(d, default=str))


def run_compare(
    runs: list[CompareRun],
    out: str | Path,
    *,
    data: tuple | None = None,
    reuse: bool = True,
    on_result: Callable[[CompareRun], None] | None = None,
) -> list[CompareRun]:
    """Train every planned run (model-major), writing the report after each one.

    Args:
        runs: from :func:`plan_runs`.
        out: report folder (``compare.md``, ``compare.json``, ``compare.png``).
        data: optional ``(tokenizer, train, val)`` used for every run instead of opening
            ``cfg.data`` (tests); by default each distinct data section is opened once and shared.
        reuse: keep the result of a run folder whose saved config equals the planned one.
        on_result: called after each run finishes (progress printing).
    """
    from nestlearn.train.trainer import open_data

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    opened: dict[tuple, tuple] = {}
    for run in runs:
        cached = finished_result(run) if reuse else None
        if cached is not None:
            logger.info("reusing %s (same config, finished earlier)", run.run_dir)
            run.result = cached
        else:
            run_data = data
            if run_data is None:
                key = _data_key(run.cfg)
                if key not in opened:
                    opened[key] = open_data(run.cfg)
                run_data = opened[key]
            try:
                run.result = _train_one(run, run_data)
            except (FloatingPointError, TrainingStopped) as e:  # one diverging model should not
                # sink the others (the trainer stops a diverged or dead run with TrainingStopped)
                logger.warning("%s seed %d diverged: %s", run.model, run.seed, e)
                run.result = {"model": run.model, "seed": run.seed, "diverged": str(e)}
            payload = {"config": run.planned, "result": run.result}
            run.run_dir.mkdir(parents=True, exist_ok=True)  # a run stopped early may have none
            (run.run_dir / RESULT_FILE).write_text(json.dumps(payload, indent=1), encoding="utf-8")
        write_report(runs, out)
        if on_result is not None:
            on_result(run)
    return runs


# -------------------------------------------------------------------------- report
def _mean_std(xs: list[float], fmt: str) -> str:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.mean(xs), fmt)} ± {format(statistics.stdev(xs), fmt)}"


def summarize(runs: list[CompareRun]) -> list[list[str]]:
    """One table row per model (in run order): mean ± sample std over its finished seeds."""
    rows = []
    for model in dict.fromkeys(r.model for r in runs):
        done = [r.result for r in runs if r.model == model and "val_loss" in r.result]
        failed = [r for r in runs if r.model == model and "diverged" in r.result]
        pending = [r for r in runs if r.model == model and not r.result]
        if not done:
            status = "diverged" if failed else "pending"
            rows.append([model, "", status, "", "", "", ""])
            continue
        label = model
        if failed or pending:
            label += f" ({len(done)}/{len(done) + len(failed) + len(pending)} seeds)"
        rows.append(
            [
                label,
                f"{done[0]['params']:,}",
                _mean_std([d["val_loss"] for d in done], ".4f"),
                _mean_std([d["val_ppl"] for d in done], ".2f"),
                _mean_std([d["val_bpb"] for d in done], ".4f"),
                _mean_std([d["train_tok_s"] for d in done], ",.0f"),
                _mean_std([d["wall_time_s"] for d in done], ".1f") + " s",
            ]
        )
    return rows


def _param_mismatch(runs: list[CompareRun], tol: float = 0.05) -> list[str]:
    params = {}
    for r in runs:
        if "params" in r.result:
            params.setdefault(r.model, r.result["params"])
    if not params:
        return []
    ref = next(iter(params.values()))
    return [m for m, n in params.items() if abs(n / ref - 1) > tol]


def write_report(runs: list[CompareRun], out: str | Path) -> Path:
    """Write ``compare.md``, ``compare.json`` and (when any run finished) ``compare.png``."""
    out = Path(out)
    cfg = runs[0].cfg
    B, T, steps = cfg.data.batch_size, cfg.data.seq_len, cfg.train.steps
    seeds = sorted({r.seed for r in runs})
    header = [
        "# nestlearn compare",
        "",
        f"- budget: {steps * B * T:,} training tokens = {steps} steps x {B} sequences x {T} "
        f"tokens (identical for every model)",
        f"- data: tokenizer `{cfg.data.tokenizer}`, train `{cfg.data.train}`; validation loss, "
        f"perplexity and bits/byte on {cfg.train.eval_tokens:,} validation tokens",
        f"- optimizer: {cfg.optim.name} lr {cfg.optim.lr:g}, warm-up {cfg.schedule.warmup_steps} "
        f"steps then cosine; seeds {', '.join(map(str, seeds))} (mean ± sample std over seeds)",
        f"- machine: {platform.machine()} {platform.system()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {time.strftime('%Y-%m-%d %H:%M')}",
        "- train tok/s is the median over steps after the first; wall time includes evaluations",
        "",
    ]
    table = markdown_table(HEADERS, summarize(runs))
    notes = ["", "Loss curves (first seed of each model): compare.png"]
    mismatch = _param_mismatch(runs)
    if mismatch:
        notes.append(
            f"\nNote: parameter counts differ by more than 5% from {runs[0].model} for "
            f"{', '.join(mismatch)}; compare them with care (overrides such as model.dim do not "
            "rescale a preset's ffn_hidden)."
        )
    md = out / "compare.md"
    md.write_text("\n".join(header) + "\n" + table + "\n" + "\n".join(notes) + "\n")
    records = [dict(r.result, run_dir=str(r.run_dir)) for r in runs if r.result]
    (out / "compare.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    first = {}
    for r in runs:
        if "val_loss" in r.result and r.model not in first:
            first[r.model] = r.run_dir
    if first:
        from nestlearn.train.report import plot_losses

        plot_losses(first, out / "compare.png", title=f"{steps * B * T:,} tokens, batch {B} x {T}")
    return md
