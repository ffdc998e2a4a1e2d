"""Continual translation of a novel language, CTNL (arXiv 2512.24695 §9.1, Fig. 8), at CPU size.

Two constructed languages per seed (:mod:`nestlearn.data.synthetic.conlang`: A verb-final with
an object case, B verb-initial with adjectives after the noun, each with its own words and
suffixes). A language's *material* is its grammar notes, dictionary and parallel examples, one
line each; a held-out sentence is translated by greedy decoding after
``"<Language>: <sentence>\\nEnglish:"`` up to the end of the line, and scored against the English
with corpus chrF (:func:`nestlearn.eval.chrf.corpus_chrf`, sacrebleu's default chrF).

Every method answers with the same attention context: the material of the language read last
(its last ``window`` tokens, whole lines). Reading a new language starts a new context, so in
setting 2 language A's material is no longer in context when A is tested again.

* ``none``: no material at all (what pretraining alone gives).
* ``icl``: the pretrained model, the window as context (Hope-0).
* ``hope-k``: the MLPs stacked into CMS levels with ``k`` update periods
  (:func:`~nestlearn.studies.ttl.hope_periods`) learn from every token of the material as it
  streams past (:class:`~nestlearn.studies.ttl.LevelStream`); the answer is given by the model
  with the resulting fast weights and the same window as context.

Settings: **single** (1): each language alone, from the pretrained weights. **sequential** (2):
A's material, then B's, then both languages tested with B's material in context; A-after-B
is the forgetting cell. Hope's levels keep learning across the boundary (the fast weights
carry over; only the attention cache is emptied).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from nestlearn.data.synthetic.conlang import CTNLTask, ctnl_task
from nestlearn.eval.chrf import corpus_chrf
from nestlearn.studies.ttl import (
    CellStore,
    LevelStream,
    check_levels,
    greedy,
    hope_periods,
    newline_ids,
    prefill,
    run_cell,
    save_figure,
    window_ids,
    write_results,
)
from nestlearn.utils.tables import markdown_table

logger = logging.getLogger(__name__)

__all__ = ["CTNLConfig", "ctnl_report", "method_names", "run_ctnl"]

CELLS = ("single/A", "single/B", "seq/B", "seq/A")
"""Scores of one method: each language alone; after A then B, language B and language A."""


@dataclass
class CTNLConfig:
    """What ``nestlearn ctnl`` runs. Every field acts; ``__post_init__`` refuses bad values."""

    seeds: list[int] = field(default_factory=lambda: [0])
    levels: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    """Methods: ``0`` = ICL, ``k`` = Hope-k. ``none`` (no material) is always run too."""
    periods: list[int] = field(default_factory=lambda: [64, 256, 1024])
    """Hope-k uses ``periods[:k]``, cyclic over depth."""
    level_lr: float = 0.1
    """Inner learning rate of every level (eq. 71: ``eta = level_lr / period``)."""
    window: int = 1024
    """Most tokens of a language's material kept in the attention context (whole lines)."""
    n_parallel: int = 16
    n_test: int = 12
    n_nouns: int = 8
    n_verbs: int = 5
    n_adjectives: int = 4
    max_new: int = 24
    """Most tokens decoded per translation."""
    call_len: int = 128

    def __post_init__(self) -> None:
        check_levels(self.seeds, self.levels, self.periods, lowest=0,
                     meaning="0 = ICL, k = Hope-k with periods[:k]")  # fmt: skip
        if self.level_lr <= 0:
            raise ValueError(f"level_lr must be > 0 (0 would make Hope-k equal ICL), got "
                             f"{self.level_lr}")  # fmt: skip
        for name in ("window", "n_test", "max_new", "call_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_parallel < 0:
            raise ValueError(f"n_parallel must be >= 0, got {self.n_parallel}")


def method_names(levels: Sequence[int]) -> list[str]:
    """``["none", "icl", "hope-1", ...]`` for ``levels``."""
    return ["none"] + ["icl" if k == 0 else f"hope-{k}" for k in levels]


_DATA_KEYS = ("source", "window", "n_parallel", "n_test", "n_nouns", "n_verbs", "n_adjectives",
              "max_new")  # fmt: skip


def cell_keys(method: str) -> tuple[str, ...]:
    """The settings a cell of ``method`` depends on (seeds and levels select cells)."""
    hope = ("periods", "level_lr", "call_len") if method.startswith("hope") else ()
    return _DATA_KEYS + hope


def _tasks(cfg: CTNLConfig, seed: int) -> tuple[CTNLTask, CTNLTask]:
    kw = dict(n_parallel=cfg.n_parallel, n_test=cfg.n_test, n_nouns=cfg.n_nouns,
              n_verbs=cfg.n_verbs, n_adjectives=cfg.n_adjectives)  # fmt: skip
    return ctnl_task(seed, 0, **kw), ctnl_task(seed, 1, **kw)  # type: ignore[arg-type]


class _Translator:
    """Greedy translation of a task's held-out sentences, scored with chrF."""

    def __init__(self, tokenizer: Any, vocab_size: int, max_new: int) -> None:
        self.tok = tokenizer
        self.stop = newline_ids(tokenizer, vocab_size)
        self.max_new = max_new

    def lines(self, task: CTNLTask) -> list[list[int]]:
        return [self.tok.encode(line + "\n") for line in task.material_lines()]

    def score(self, model: torch.nn.Module, context: list[int], task: CTNLTask) -> dict:
        state = prefill(model, context)
        hyps = []
        for s in task.test:
            out = greedy(model, state, self.tok.encode(task.prompt(s)), self.max_new, self.stop)
            hyps.append(self.tok.decode(out).split("\n")[0].strip())
        refs = [s.english for s in task.test]
        return {"chrf": corpus_chrf(hyps, refs), "hypotheses": hyps, "context_tokens": len(context)}


def _run_method(
    method: str, model: torch.nn.Module, tr: _Translator, a: CTNLTask, b: CTNLTask,
    cfg: CTNLConfig, say: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    la, lb = tr.lines(a), tr.lines(b)
    w = cfg.window
    res: dict[str, Any] = {}
    if method == "none":
        for name, task in (("A", a), ("B", b)):
            r = tr.score(model, [], task)
            res[f"single/{name}"] = r
            res[f"seq/{name}"] = r  # no material: nothing to learn or forget
        return res
    if method == "icl":
        res["single/A"] = tr.score(model, window_ids(la, w), a)
        res["single/B"] = tr.score(model, window_ids(lb, w), b)
        res["seq/B"] = res["single/B"]  # the same context and weights: ICL has no other memory
        res["seq/A"] = tr.score(model, window_ids(lb, w), a)
        return res
    k = int(method.split("-")[1])
    periods = hope_periods(k, cfg.periods)
    t0 = time.perf_counter()
    stream = LevelStream(model, periods, cfg.level_lr, window=w, call_len=cfg.call_len)
    for line in la:
        stream.read(line)
    fast = stream.snapshot()
    say(f"  {method}: read A ({stream.tokens_read} tokens, {time.perf_counter() - t0:.0f} s)")
    res["single/A"] = tr.score(fast, window_ids(la, w), a)
    stream.new_context()  # language B starts: its material is the attention context from here
    for line in lb:
        stream.read(line)
    fast = stream.snapshot()
    res["seq/B"] = tr.score(fast, window_ids(lb, w), b)
    res["seq/A"] = tr.score(fast, window_ids(lb, w), a)
    say(f"  {method}: read A then B ({time.perf_counter() - t0:.0f} s)")
    stream = LevelStream(model, periods, cfg.level_lr, window=w, call_len=cfg.call_len)
    for line in lb:
        stream.read(line)
    res["single/B"] = tr.score(stream.snapshot(), window_ids(lb, w), b)
    res["periods"] = list(periods)
    return res


def run_ctnl(
    model: torch.nn.Module,
    tokenizer: Any,
    out: str | Path,
    cfg: CTNLConfig | None = None,
    *,
    source: str = "",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every (seed, method) cell not already in ``out/cells``; write ``out/results.json``,
    ``out/results.md`` and ``out/ctnl.png``. ``model`` (a ``transformer`` with SwiGLU MLPs) is
    not modified. ``source`` names the model in the settings (a cell of another model is not
    reused)."""
    cfg = cfg or CTNLConfig()
    say = progress or (lambda s: logger.info("%s", s))
    out = Path(out)
    store = CellStore(out, {"source": source, **asdict(cfg)})
    model = model.float().eval()
    tr = _Translator(tokenizer, model.cfg.vocab_size, cfg.max_new)
    methods = method_names(cfg.levels)
    cells: dict[str, dict[str, Any]] = {}
    t_all = time.perf_counter()
    for seed in cfg.seeds:
        a, b = _tasks(cfg, seed)
        for method in methods:
            name = f"seed{seed}-{method}"
            cells[name] = run_cell(
                store, name, cell_keys(method), {"seed": seed, "method": method},
                partial(_run_method, method, model, tr, a, b, cfg, say), say,
                start=f"{name}: {a.language.name} ({a.language.order}) and {b.language.name} "
                f"({b.language.order})",
                done=_done_line,
            )  # fmt: skip
    summary = _summarize(cells, cfg, methods)
    report = {"config": asdict(cfg), "source": source, "summary": summary, "cells": cells,
              "languages": {str(s): [_describe(t) for t in _tasks(cfg, s)] for s in cfg.seeds},
              "wall_s_this_call": time.perf_counter() - t_all}  # fmt: skip
    write_results(out, report, ctnl_report(report))
    plot_ctnl(summary, out / "ctnl.png")
    return report


def _done_line(name: str, cell: dict[str, Any]) -> str:
    r = cell["results"]
    return (f"{name}: chrF " + ", ".join(f"{c} {r[c]['chrf']:.1f}" for c in CELLS)
            + f" ({cell['wall_s']:.0f} s)")  # fmt: skip


def _describe(t: CTNLTask) -> dict[str, Any]:
    lang = t.language
    return {"name": lang.name, "order": lang.order, "adj_after": lang.adj_after,
            "plural": lang.plural, "past": lang.past, "present": lang.present,
            "object_case": lang.object_case, "dictionary": t.dictionary,
            "example": [t.parallel[0].source, t.parallel[0].english] if t.parallel else None,
            "test": [[s.source, s.english] for s in t.test]}  # fmt: skip


def _summarize(cells: dict, cfg: CTNLConfig, methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in methods:
        per = {c: [cells[f"seed{s}-{m}"]["results"][c]["chrf"] for s in cfg.seeds] for c in CELLS}
        mean = {c: sum(v) / len(v) for c, v in per.items()}
        mean["single"] = (mean["single/A"] + mean["single/B"]) / 2
        mean["forgetting/A"] = mean["single/A"] - mean["seq/A"]
        wall = sum(cells[f"seed{s}-{m}"]["wall_s"] for s in cfg.seeds)
        cpu = sum(cells[f"seed{s}-{m}"].get("cpu_s", 0.0) for s in cfg.seeds)
        out[m] = {"mean": mean, "per_seed": per, "wall_s": wall, "cpu_s": cpu}
    return out


def _label(m: str) -> str:
    return {"none": "no material", "icl": "ICL (Hope-0)"}.get(m, m.replace("hope", "Hope"))


def ctnl_report(report: dict[str, Any]) -> str:
    """The markdown of ``results.md``."""
    cfg, summ = report["config"], report["summary"]
    langs = report["languages"][str(cfg["seeds"][0])]
    rows = []
    for m, s in summ.items():
        v = s["mean"]
        rows.append([_label(m), f"{v['single/A']:.1f}", f"{v['single/B']:.1f}",
                     f"{v['single']:.1f}", f"{v['seq/B']:.1f}", f"{v['seq/A']:.1f}",
                     f"{v['forgetting/A']:+.1f}", f"{s['wall_s']:.0f}",
                     f"{s['cpu_s']:.0f}"])  # fmt: skip
    md = [
        "# Continual translation of a novel language (CTNL analogue)",
        "",
        f"Model: {report['source'] or 'given model'}; seeds {cfg['seeds']}; {cfg['n_parallel']} "
        f"parallel examples and {cfg['n_test']} held-out sentences per language; window "
        f"{cfg['window']} tokens; Hope-k: periods {cfg['periods']}[:k], level lr "
        f"{cfg['level_lr']}. Corpus chrF (0-100, sacrebleu default), mean over seeds.",
        "",
        f"Seed {cfg['seeds'][0]}: A = {langs[0]['name']} ({langs[0]['order']}), "
        f"B = {langs[1]['name']} ({langs[1]['order']}).",
        "",
        markdown_table(
            ["method", "A alone", "B alone", "mean alone (setting 1)", "B after A",
             "A after B (setting 2)", "forgetting on A", "wall s", "CPU s"],
            rows,
        ),  # fmt: skip
    ]
    if len(cfg["seeds"]) > 1:
        md += ["", "Per seed (A alone / A after B):", ""]
        for m, s in summ.items():
            pairs = zip(s["per_seed"]["single/A"], s["per_seed"]["seq/A"])
            md.append(f"* {_label(m)}: " + "; ".join(f"{x:.1f} / {y:.1f}" for x, y in pairs))
    md += [
        "",
        "The paper (Fig. 8, Llama-3 continually pre-trained after the conversion) reports every "
        "Hope variant at or above ICL when each language is learned alone, and under sequential "
        "learning ICL falling to about its pre-training level while Hope-3 almost recovers the "
        "single-language score.",
        "",
        "![ctnl](ctnl.png)",
        "",
    ]
    return "\n".join(md)


def plot_ctnl(summary: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars: each language alone (mean of A and B) and A after B, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    x = range(len(names))
    single = [summary[m]["mean"]["single"] for m in names]
    seq = [summary[m]["mean"]["seq/A"] for m in names]
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    ax.bar([i - 0.2 for i in x], single, 0.4, color="tab:red", label="setting 1: alone (A, B)")
    ax.bar([i + 0.2 for i in x], seq, 0.4, color="tab:blue", label="setting 2: A after B")
    ax.set_xticks(list(x), [_label(m) for m in names], fontsize=8)
    ax.set_ylabel("chrF")
    ax.set_title("CTNL analogue: translation into English")
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylim(0, 1.3 * max(single + seq + [1.0]))  # room for the legend
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path)
