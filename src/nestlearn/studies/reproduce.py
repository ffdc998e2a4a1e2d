"""``nestlearn reproduce``: the paper's experiments, scaled to a CPU, written up as one report.

Stages (each result is cached as JSON under ``OUT/cache/`` so an interrupted run resumes):

1. train every model of the suite on the same token budget and seeds (:func:`run_compare`);
2. test-set perplexity and bits/byte of every run;
3. zero-shot tasks in the layout of arXiv 2512.24695 Table 2 (needs the task data folder);
4. RULER-style NIAH at lengths tiny models can hold (Table 1);
5. MQAR and MAD, each model family trained on the task itself (Tables 3-4);
6. formal languages Bin0/Bin1 (Table 5), and the S-NIAH analogue (Table 1's single-needle
   tasks; each family trained at 512 tokens, tested at 512 / 2K / 8K: :mod:`.sniah`);
7. loss against position on the held-out corpus (Fig. 10);
8. the studies the suite names (:mod:`.reproduce_studies`): effect of levels (Fig. 7), CTNL
   (Fig. 8), knowledge incorporation and M3 on a ViT (Fig. 11 / 12), each run by its command's
   code in ``OUT/studies/<study>/``; skipped, with the reason, when their model or data is absent;

then ``OUT/index.md`` with PNG plots, the paper's numbers beside ours and a verdict generated
from the numbers (:func:`nestlearn.studies.report_md.verdict`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from nestlearn.studies import report_md as R
from nestlearn.studies.reproduce_index import write_index
from nestlearn.studies.reproduce_suites import SUITES, Suite
from nestlearn.utils.files import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["SUITES", "Suite", "run_reproduce", "write_index"]


# ----------------------------------------------------------------- caching
def _cached(path: Path, fn: Callable[[], Any], cost: dict[str, Any] | None = None) -> Any:
    """Return the JSON at ``path`` if present, else compute ``fn()``, save it and return it.

    The seconds the computation took go to a sidecar ``<name>.seconds`` next to it, so a report
    written after any number of resumes can still say what each stage cost; ``cost`` (a stage's
    ``{"items", "timed", "seconds"}``) accumulates them, cached or not.
    """
    timing = path.with_suffix(".seconds")
    seconds: float | None = None
    if path.is_file():
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            logger.warning("ignoring unreadable cache %s", path)
        else:
            try:
                seconds = float(timing.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass  # computed by a version that kept no timing
            _count(cost, seconds)
            return value
    t0 = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(value, indent=1, default=float).encode("utf-8"))
    atomic_write_bytes(timing, f"{seconds:.3f}\n".encode())
    _count(cost, seconds)
    return value


def _count(cost: dict[str, Any] | None, seconds: float | None) -> None:
    """One item into a stage's ``{"items", "timed", "seconds"}`` (``None``: untimed)."""
    if cost is None:
        return
    cost["items"] += 1
    if seconds is not None:
        cost["timed"] += 1
        cost["seconds"] += seconds


# the suite fields each stage's results depend on (a change gives the stage new cache keys)
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "test_lm": ("seq_len", "eval_tokens"),
    "zeroshot": ("zeroshot_limit", "wikitext_limit"),
    "niah": ("niah_tasks", "niah_lengths", "niah_samples"),
    "recall": ("recall_steps", "recall_num_train", "recall_num_test"),
    "formal": ("formal_steps", "formal_num_train", "formal_num_test"),
    "sniah": ("sniah_train_length", "sniah_lengths", "sniah_steps", "sniah_samples"),
    "context": ("seq_len", "context_length", "context_windows"),
    "levels": ("levels", "ttl_model"),
    "ctnl": ("ctnl", "ttl_model"),
    "knowledge": ("knowledge", "ttl_model"),
    "vit_optim": ("vit_optim",),
}


def stage_key(
    cache: Path, stage: str, name: str, suite: Suite, run_dir: Path | None = None
) -> Path:
    """Cache file of one item: ``cache/<stage>/<name>-<digest>.json``.

    The digest covers the suite fields the stage reads and, for evaluations of a trained model,
    the run's ``compare_result.json`` (rewritten whenever the run is retrained), so editing a
    suite or retraining a model never reuses a stale result.
    """
    parts: dict[str, Any] = {f: getattr(suite, f) for f in STAGE_FIELDS[stage]}
    if run_dir is not None:
        res = Path(run_dir) / "compare_result.json"
        parts["run"] = hashlib.sha1(res.read_bytes()).hexdigest() if res.is_file() else None
    digest = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return cache / stage / f"{name}-{digest[:10]}.json"


def _step(
    label: str,
    path: Path,
    fn: Callable[..., Any],
    *args: Any,
    cost: dict[str, Any] | None = None,
    compute: bool = True,
) -> Any:
    """``fn(*args)`` cached at ``path``; a failure becomes ``{"error": ...}`` (not cached, so a
    rerun tries again) instead of sinking the whole suite. ``compute=False`` only reads the
    cache (a missing item becomes an error entry)."""
    if not compute and not path.is_file():
        return {"not_run": True}  # callers leave it out of the report
    try:
        return _cached(path, lambda: fn(*args), cost)
    # Broad on purpose: one family failing one evaluation (an unsupported length, a shape a
    # recipe does not fit) must not end a two-hour suite; the report shows the message.
    except Exception as e:  # noqa: BLE001
        logger.warning("%s failed: %s", label, e)
        return {"error": f"{type(e).__name__}: {e}"}


# ----------------------------------------------------------------- stages
def _test_lm(run_dir: Path, suite: Suite) -> dict[str, float]:
    from nestlearn.data import default_corpus
    from nestlearn.train.run import load_run
    from nestlearn.train.validation import evaluate_lm, token_byte_lengths

    lr = load_run(run_dir)
    src = default_corpus(lr.cfg.data.tokenizer, "test")
    tb = token_byte_lengths(lr.tokenizer, lr.cfg.model.vocab_size)
    ev = evaluate_lm(
        lr.model, src, seq_len=suite.seq_len, batch_size=8, max_tokens=suite.eval_tokens,
        token_bytes=tb,
    )  # fmt: skip
    return {"test_loss": ev["loss"], "test_ppl": ev["ppl"], "test_bpb": ev["bpb"]}


def _zeroshot(run_dir: Path, data_dir: Path, suite: Suite) -> dict[str, Any]:
    from nestlearn.eval.zeroshot import PAPER_ORDER, LMScorer, evaluate_tasks, paper_row
    from nestlearn.train.run import load_run

    lr = load_run(run_dir)
    scorer = LMScorer(lr.model, lr.tokenizer, batch_size=16)
    tasks = [t for t in PAPER_ORDER if t != "wikitext"]
    res = evaluate_tasks(scorer, tasks, data_dir, limit=suite.zeroshot_limit)
    if "wikitext" in PAPER_ORDER:
        res.update(evaluate_tasks(scorer, ["wikitext"], data_dir, limit=suite.wikitext_limit))
    return {"row": paper_row(res), "tasks": res}


def _niah(run_dir: Path, suite: Suite, seed: int) -> list[dict]:
    from nestlearn.eval.niah import evaluate_niah
    from nestlearn.train.run import load_run

    lr = load_run(run_dir)
    recs = evaluate_niah(
        lr.model, lr.tokenizer, suite.niah_tasks, suite.niah_lengths, suite.niah_samples,
        seed=seed, max_new_tokens=32,
    )  # fmt: skip
    return recs


def _recall(task: str, family: str, suite: Suite, seed: int) -> dict[str, Any]:
    from nestlearn.studies.recall import build_token_task, default_recipe, train_token_task

    t = build_token_task(
        task, seed=seed, num_train=suite.recall_num_train, num_test=suite.recall_num_test
    )
    cfg = default_recipe(task, family=family, steps=suite.recall_steps, seed=seed)
    res = train_token_task(t, cfg)
    return {"accuracy": res.accuracy, "params": res.params, "wall_time_s": res.wall_time_s}


def _formal(lang: str, family: str, suite: Suite, seed: int) -> dict[str, Any]:
    from nestlearn.studies.formal import train_formal
    from nestlearn.studies.recall import default_recipe

    cfg = default_recipe(lang, family=family, steps=suite.formal_steps, seed=seed)
    res = train_formal(
        lang, cfg, num_train=suite.formal_num_train, num_test=suite.formal_num_test,
        data_seed=seed,
    )  # fmt: skip
    return {"bin0": res.bin0, "bin1": res.bin1, "params": res.params}


def _context(run_dir: Path, suite: Suite, label: str) -> dict[str, Any]:
    from nestlearn.eval.context_usage import corpus_windows, position_losses, summarize
    from nestlearn.train.run import load_run

    lr = load_run(run_dir)
    win = corpus_windows(lr.tokenizer, "test", suite.context_length, suite.context_windows)
    losses = position_losses(lr.model, win, batch_size=4)
    return asdict(summarize(losses, label, train_len=suite.seq_len))


# ----------------------------------------------------------------- driver
@dataclass
class Reproduction:
    """Everything the report is written from (also saved as ``OUT/results.json``)."""

    suite: dict[str, Any]
    lm: list[dict] = field(default_factory=list)
    zeroshot: dict[str, Any] = field(default_factory=dict)
    niah: list[dict] = field(default_factory=list)
    recall: list[dict] = field(default_factory=list)
    formal: list[dict] = field(default_factory=list)
    sniah: list[dict] = field(default_factory=list)
    context: list[dict] = field(default_factory=list)
    studies: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def run_reproduce(
    suite: Suite,
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    models: Sequence[str] | None = None,
    stage: Callable[[str], None] | None = None,
    compute: bool = True,
    gguf: str | Path | None = None,
) -> Path:
    """Run ``suite`` into ``out`` (resuming from ``out/cache``) and write ``out/index.md``.

    ``models`` overrides the suite's lineup; ``stage`` is called with a line per stage
    (progress). ``compute=False`` trains and evaluates nothing: the report is written from the
    runs and cached evaluations already in ``out`` (what a long suite has done so far).
    ``gguf``: a local GGUF of the pretrained model the level studies stack (default: the one in
    the cache of ``nestlearn pretrained``; without either they are skipped).
    Returns the path of ``index.md``.
    """
    from nestlearn.eval.zeroshot import DataDirError, resolve_data_dir
    from nestlearn.studies.compare import (
        available_models,
        finished_result,
        plan_runs,
        resolve_models,
        run_compare,
    )

    t0 = time.perf_counter()
    out = Path(out)
    cache = out / "cache"
    say = stage or (lambda s: logger.info("%s", s))
    torch.set_num_threads(suite.threads)
    presets = resolve_models(list(models or suite.models or available_models()))
    res = Reproduction(suite=asdict(suite))
    res.meta = {
        "models": presets,
        "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}, "
        f"{suite.threads} threads",
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }

    costs: dict[str, dict[str, Any]] = {}

    def cost(name: str) -> dict[str, Any]:
        return costs.setdefault(name, {"items": 0, "timed": 0, "seconds": 0.0})

    def step(stage_name: str, label: str, key: Path, fn: Callable[..., Any], *args: Any) -> Any:
        return _step(label, key, fn, *args, cost=cost(stage_name), compute=compute)

    # 1. training (run_compare caches finished runs in their folders)
    say(f"[1/7] training {len(presets)} models x {suite.seeds} seeds, {suite.tokens:,} tokens")
    runs = plan_runs(
        presets, tokens=suite.tokens, out=out / "runs", seeds=suite.seeds,
        batch_size=suite.batch_size, seq_len=suite.seq_len,
        overrides=[f"train.eval_tokens={suite.eval_tokens}", f"train.threads={suite.threads}"],
    )  # fmt: skip
    if compute:
        run_compare(
            runs, out / "runs", on_result=lambda r: say(f"  trained {r.model} seed {r.seed}")
        )
    else:
        for r in runs:
            r.result = finished_result(r) or {"model": r.model, "seed": r.seed}
    done = [r for r in runs if "val_loss" in r.result]
    for r in done:
        wall = r.result.get("wall_time_s")
        _count(cost("training"), None if wall is None else float(wall))
    for r in runs:
        rec = dict(r.result)
        rec.setdefault("model", r.model)
        rec.setdefault("seed", r.seed)
        res.lm.append(rec)

    # 2. test perplexity
    say("[2/7] test perplexity")
    for r, rec in zip(runs, res.lm):
        if r in done:
            key = stage_key(cache, "test_lm", f"{r.model}-seed{r.seed}", suite, r.run_dir)
            v = step("test perplexity", "test ppl", key, _test_lm, r.run_dir, suite)
            if "not_run" not in v:
                rec.update(v)

    # 3. zero-shot
    try:
        ddir = resolve_data_dir(data_dir)
    except DataDirError as e:
        ddir = None
        res.zeroshot = {"skipped": str(e).splitlines()[0]}
    if ddir is not None:
        say(f"[3/7] zero-shot ({suite.zeroshot_limit or 'all'} items per task) from {ddir}")
        res.zeroshot = {
            "runs": [], "limit": suite.zeroshot_limit, "wikitext_limit": suite.wikitext_limit,
            "data_dir": str(ddir),
        }  # fmt: skip
        for r in done:
            key = stage_key(cache, "zeroshot", f"{r.model}-seed{r.seed}", suite, r.run_dir)
            z = step("zero-shot", "zero-shot", key, _zeroshot, r.run_dir, ddir, suite)
            if "row" in z:
                res.zeroshot["runs"].append({"model": r.model, "seed": r.seed, **z})
    else:
        say(f"[3/7] zero-shot skipped: {res.zeroshot['skipped']}")

    # 4. NIAH
    say(f"[4/7] NIAH {','.join(suite.niah_tasks)} at {suite.niah_lengths}")
    for r in done:
        key = stage_key(cache, "niah", f"{r.model}-seed{r.seed}", suite, r.run_dir)
        recs = step("NIAH", "NIAH", key, _niah, r.run_dir, suite, r.seed)
        if isinstance(recs, dict):
            if "not_run" not in recs:
                res.niah.append({"model": r.model, "seed": r.seed, **recs})
            continue
        for (task, length), rs in R.group(recs, "task", "length").items():
            score = 100.0 * sum(x["score"] for x in rs) / len(rs)
            res.niah.append(
                {"model": r.model, "seed": r.seed, "task": task, "length": length, "score": score}
            )
        if r.seed == runs[0].seed or r is done[0]:
            from nestlearn.eval.niah import plot_niah_heatmap

            png = plot_niah_heatmap(recs, out / f"niah_{r.model}.png", title=r.model)
            if png is not None:
                res.plots[f"niah {r.model}"] = png.name

    # 5-6. synthetic recipes: one small model per family and task
    families = list(dict.fromkeys(r.cfg.model.family for r in runs))

    def synthetic(stage: str, label: str, names: Sequence[str], fn: Callable[..., Any],
                  column: str, into: list[dict]) -> None:  # fmt: skip
        """Each family x name x seed through ``fn(name, family, suite, seed)``."""
        for fam in families:
            for name in names:
                for s in range(suite.synthetic_seeds):
                    key = stage_key(cache, stage, f"{fam}-{name}-seed{s}", suite)
                    v = step(label, f"{fam} {name}", key, fn, name, fam, suite, s)
                    if "not_run" not in v:
                        into.append({"model": fam, column: name, "seed": s, **v})

    say(f"[5/7] MQAR/MAD {','.join(suite.recall_tasks)} for {len(families)} families")
    synthetic("recall", "MQAR/MAD", suite.recall_tasks, _recall, "task", res.recall)
    say(f"[6/7] formal languages {','.join(suite.formal_languages)}")
    synthetic("formal", "formal", suite.formal_languages, _formal, "language", res.formal)
    from nestlearn.studies.sniah import sniah_stage

    sniah_stage(suite, cache, res, out, step, say)

    # 7. context usage (first finished seed of each model)
    say(f"[7/7] context usage at {suite.context_length} tokens")
    firsts = {}
    for r in done:
        firsts.setdefault(r.model, r)
    for model, r in firsts.items():
        key = stage_key(cache, "context", f"{model}-seed{r.seed}", suite, r.run_dir)
        c = step("context usage", "context usage", key, _context, r.run_dir, suite, model)
        if "position_loss" in c:
            res.context.append(c)
    if res.context:
        from nestlearn.eval.context_usage import ContextUsage, plot_context_usage

        plot_context_usage([ContextUsage(**c) for c in res.context], out / "context_usage.png")
        res.plots["context usage"] = "context_usage.png"
    if done:
        from nestlearn.train.report import plot_losses

        plot_losses({m: r.run_dir for m, r in firsts.items()}, out / "loss_curves.png")
        res.plots["loss curves"] = "loss_curves.png"

    # 8. studies (levels, CTNL, knowledge, vit-optim): each one cached item
    from nestlearn.studies.reproduce_studies import studies_stage

    studies_stage(suite, cache, res, out, step, say, runs=done, gguf=gguf)

    res.meta["wall_time_s"] = time.perf_counter() - t0
    res.meta["stage_cost"] = costs
    if not compute:
        res.meta["report_only"] = True
    (out / "results.json").write_text(json.dumps(asdict(res), indent=1, default=float))
    return write_index(asdict(res), out)
