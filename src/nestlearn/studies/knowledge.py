"""Knowledge incorporation: learn generated facts from documents, answer without them.

The model reads ``n_entities`` fictional biographies (:mod:`nestlearn.data.synthetic.facts`:
invented names, towns and years, so nothing can be known from pretraining) and then answers
``3 * n_entities`` four-way multiple-choice questions, each option scored by its summed
log-likelihood after ``"Question: ...\\nAnswer:"`` (accuracy; ``acc_norm`` divides by the
option's characters, as lm-eval does). Methods:

* ``none``: the questions alone (chance is ``1 / n_options``);
* ``context``: the documents in the attention context, then the questions (upper bound);
* ``finetune``: ``ft_steps`` AdamW steps on the documents' next-token loss (all weights, each
  step one batch of every document), then the questions without the documents;
* ``hope-k``: the MLPs stacked into CMS levels with ``k`` update periods
  (:class:`~nestlearn.studies.ttl.LevelStream`) learn from the documents streamed past them
  (``passes`` times), then the questions with the fast weights and an empty context.

After each method, the perplexity of the embedded corpus's validation split (``ppl_tokens``
tokens in windows of ``ppl_window``, each from a fresh state) measures what the weights lost;
``none`` and ``context`` leave the weights unchanged.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nestlearn.data.synthetic.facts import ATTRIBUTES, FactSet, fact_set
from nestlearn.studies.ttl import (
    CellStore,
    LevelStream,
    check_levels,
    hope_periods,
    option_logprobs,
    prefill,
    run_cell,
    save_figure,
    write_results,
)
from nestlearn.utils.tables import markdown_table

logger = logging.getLogger(__name__)

__all__ = ["KnowledgeConfig", "corpus_ppl", "knowledge_report", "run_knowledge", "validation_ids"]


@dataclass
class KnowledgeConfig:
    """What ``nestlearn knowledge`` runs. Every field acts; ``__post_init__`` refuses bad
    values."""

    seeds: list[int] = field(default_factory=lambda: [0])
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Hope-k for each k (``periods[:k]``); ``none``, ``context`` and ``finetune`` always run."""
    periods: list[int] = field(default_factory=lambda: [64, 256, 1024])
    level_lr: float = 0.1
    passes: int = 1
    """How many times Hope reads the documents."""
    n_entities: int = 10
    n_options: int = 4
    ft_steps: int = 10
    ft_lr: float = 1e-4
    ppl_tokens: int = 4096
    ppl_window: int = 512
    window: int = 1024
    """Hope's attention window while streaming (the documents are shorter by default)."""
    call_len: int = 128

    def __post_init__(self) -> None:
        check_levels(self.seeds, self.levels, self.periods, lowest=1,
                     meaning="Hope-k uses periods[:k]")  # fmt: skip
        for name in ("level_lr", "ft_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("passes", "ft_steps", "ppl_window", "window", "call_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.ppl_tokens < self.ppl_window:
            raise ValueError(f"ppl_tokens ({self.ppl_tokens}) must be at least ppl_window "
                             f"({self.ppl_window})")  # fmt: skip
        fact_set(0, n_entities=self.n_entities, n_options=self.n_options)  # validates both


def cell_keys(method: str) -> tuple[str, ...]:
    """The settings a cell of ``method`` depends on (seeds and levels select cells)."""
    ppl = ("ppl_tokens", "ppl_window")
    if method == "base":
        return ("source", *ppl)
    keys: tuple[str, ...] = ("source", "n_entities", "n_options")
    if method == "finetune":
        keys += ("ft_steps", "ft_lr", *ppl)
    elif method.startswith("hope"):
        keys += ("periods", "level_lr", "passes", "window", "call_len", *ppl)
    return keys


def method_names(levels: list[int]) -> list[str]:
    return ["none", "context", "finetune"] + [f"hope-{k}" for k in levels]


# ------------------------------------------------------------------ scoring
def answer_questions(
    model: torch.nn.Module, tokenizer: Any, facts: FactSet, context: list[int]
) -> dict[str, Any]:
    """Accuracy (summed and per-character log-likelihood) and the answer's mean margin over
    the distractors (nats), after ``context``."""
    state = prefill(model, context)
    right = right_norm = 0
    margin = 0.0
    by_attr = {a: 0 for a in ATTRIBUTES}
    picks = []
    for q in facts.questions:
        opts = [" " + o for o in q.options]
        lp = option_logprobs(model, state, tokenizer.encode(q.prompt()),
                             [tokenizer.encode(o) for o in opts])  # fmt: skip
        norm = [v / len(o) for v, o in zip(lp, opts)]
        pick = max(range(len(lp)), key=lp.__getitem__)
        ok = pick == q.answer
        right += ok
        by_attr[q.attribute] += ok
        right_norm += max(range(len(norm)), key=norm.__getitem__) == q.answer
        others = [v for i, v in enumerate(lp) if i != q.answer]
        margin += lp[q.answer] - sum(others) / len(others)
        picks.append(pick)
    n = len(facts.questions)
    per = n // len(ATTRIBUTES)
    return {"acc": right / n, "acc_norm": right_norm / n, "margin": margin / n,
            "acc_by_attribute": {a: v / per for a, v in by_attr.items()}, "picks": picks}  # fmt: skip


def validation_ids(tokenizer: Any, n_tokens: int, window: int) -> list[list[int]]:
    """``n_tokens // window`` windows of ``window + 1`` tokens from the embedded corpus's
    validation documents, taken round-robin over the documents (2,000 characters in)."""
    from nestlearn.data.corpus import corpus_documents

    docs = [text for _, text in corpus_documents("validation")]
    n = n_tokens // window
    per_doc = math.ceil(n / len(docs))
    pools = [tokenizer.encode(t[2000 : 2000 + 8 * (window + 1) * per_doc]) for t in docs]
    out: list[list[int]] = []
    for j in range(per_doc):
        for ids in pools:
            seg = ids[j * (window + 1) : (j + 1) * (window + 1)]
            if len(seg) == window + 1 and len(out) < n:
                out.append(seg)
    if len(out) < n:
        raise ValueError(f"the validation split gave {len(out)} windows of {window} tokens, "
                         f"{n} needed; lower ppl_tokens")  # fmt: skip
    return out


@torch.no_grad()
def corpus_ppl(model: torch.nn.Module, windows: list[list[int]]) -> float:
    """Perplexity over ``windows`` (each read from a fresh state)."""
    dev = model.embed.weight.device
    total, count = 0.0, 0
    for w in windows:
        x = torch.tensor([w], device=dev)
        logits, _ = model(x[:, :-1])
        total += float(F.cross_entropy(logits[0].float(), x[0, 1:], reduction="sum"))
        count += len(w) - 1
    return math.exp(total / count)


# ------------------------------------------------------------------ methods
def _doc_ids(tokenizer: Any, facts: FactSet) -> list[list[int]]:
    return [tokenizer.encode(d.text + "\n\n") for d in facts.documents]


def finetune(
    model: torch.nn.Module, docs: list[list[int]], *, steps: int, lr: float
) -> tuple[torch.nn.Module, list[float]]:
    """A copy of ``model`` after ``steps`` full-batch AdamW steps on the documents."""
    from nestlearn.memory.cms import attach_outer_schedule

    m = copy.deepcopy(model).train()
    dev = m.embed.weight.device
    T = max(len(d) for d in docs)
    idx = torch.zeros(len(docs), T, dtype=torch.long, device=dev)
    tgt = torch.full((len(docs), T), -100, dtype=torch.long, device=dev)
    for i, d in enumerate(docs):
        idx[i, : len(d)] = torch.tensor(d)
        tgt[i, : len(d) - 1] = torch.tensor(d[1:])
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    attach_outer_schedule(m, opt)
    losses = []
    for _ in range(steps):
        logits, _ = m(idx)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    return m.eval(), losses


def _run_method(
    method: str, model: torch.nn.Module, tokenizer: Any, facts: FactSet, cfg: KnowledgeConfig,
    windows: list[list[int]], say: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    docs = _doc_ids(tokenizer, facts)
    if method in ("none", "context"):
        ctx = [t for d in docs for t in d] if method == "context" else []
        return {**answer_questions(model, tokenizer, facts, ctx), "context_tokens": len(ctx)}
    if method == "finetune":
        m, losses = finetune(model, docs, steps=cfg.ft_steps, lr=cfg.ft_lr)
        say(f"  finetune: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
        extra: dict[str, Any] = {"ft_loss": losses}
    else:
        k = int(method.split("-")[1])
        stream = LevelStream(model, hope_periods(k, cfg.periods), cfg.level_lr,
                             window=cfg.window, call_len=cfg.call_len)  # fmt: skip
        for _ in range(cfg.passes):
            for d in docs:
                stream.read(d)
        m = stream.snapshot()
        extra = {"tokens_read": stream.tokens_read}
    res = answer_questions(m, tokenizer, facts, [])
    return {**res, **extra, "ppl": corpus_ppl(m, windows)}


def run_knowledge(
    model: torch.nn.Module,
    tokenizer: Any,
    out: str | Path,
    cfg: KnowledgeConfig | None = None,
    *,
    source: str = "",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every (seed, method) cell not already in ``out/cells``; write ``out/results.json``,
    ``out/results.md`` and ``out/knowledge.png``. ``model`` is not modified."""
    cfg = cfg or KnowledgeConfig()
    say = progress or (lambda s: logger.info("%s", s))
    out = Path(out)
    store = CellStore(out, {"source": source, **asdict(cfg)})
    model = model.float().eval()
    windows: list[list[int]] | None = None
    t_all = time.perf_counter()

    def wins() -> list[list[int]]:
        nonlocal windows
        if windows is None:
            windows = validation_ids(tokenizer, cfg.ppl_tokens, cfg.ppl_window)
        return windows

    base = store.get("base", cell_keys("base"))
    if base is None:
        t0 = time.perf_counter()
        base = store.put("base", {"ppl": corpus_ppl(model, wins()),
                                  "wall_s": time.perf_counter() - t0})  # fmt: skip
    say(f"corpus perplexity before any method: {base['ppl']:.3f}")
    cells: dict[str, dict[str, Any]] = {}
    for seed in cfg.seeds:
        facts = fact_set(seed, n_entities=cfg.n_entities, n_options=cfg.n_options)
        for method in method_names(cfg.levels):
            name = f"seed{seed}-{method}"
            compute = partial(_cell_results, base["ppl"], wins, method, model, tokenizer, facts,
                              cfg, say)  # fmt: skip
            cells[name] = run_cell(
                store, name, cell_keys(method), {"seed": seed, "method": method}, compute, say,
                start=f"{name}: {len(facts.documents)} documents, {len(facts.questions)} questions",
                done=_done_line,
            )
    summary = _summarize(cells, cfg, base["ppl"])
    report = {"config": asdict(cfg), "source": source, "base_ppl": base["ppl"],
              "summary": summary, "cells": cells,
              "example": _example(cfg.seeds[0], cfg),
              "wall_s_this_call": time.perf_counter() - t_all}  # fmt: skip
    write_results(out, report, knowledge_report(report))
    plot_knowledge(summary, out / "knowledge.png", chance=1 / cfg.n_options)
    return report


def _cell_results(
    base_ppl: float,
    windows: Callable[[], list[list[int]]],
    method: str,
    model: torch.nn.Module,
    tokenizer: Any,
    facts: FactSet,
    cfg: KnowledgeConfig,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """``_run_method``'s results, with the pretrained corpus perplexity where the method leaves
    the weights as they were; ``windows()`` gives the perplexity windows (read when needed)."""
    res = _run_method(method, model, tokenizer, facts, cfg, windows(), say)
    res.setdefault("ppl", base_ppl)
    return res


def _done_line(name: str, cell: dict[str, Any]) -> str:
    r = cell["results"]
    return (f"{name}: accuracy {100 * r['acc']:.1f}%, margin {r['margin']:+.2f} nats, "
            f"corpus ppl {r['ppl']:.3f} ({cell['wall_s']:.0f} s)")  # fmt: skip


def _example(seed: int, cfg: KnowledgeConfig) -> dict[str, Any]:
    f = fact_set(seed, n_entities=cfg.n_entities, n_options=cfg.n_options)
    q = f.questions[0]
    doc = next(d for d in f.documents if d.person == q.person)
    return {"document": doc.text, "question": q.prompt(), "options": q.options,
            "answer": q.answer}  # fmt: skip


def _summarize(cells: dict, cfg: KnowledgeConfig, base_ppl: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in method_names(cfg.levels):
        rs = [cells[f"seed{s}-{m}"] for s in cfg.seeds]
        mean = {k: sum(c["results"][k] for c in rs) / len(rs)
                for k in ("acc", "acc_norm", "margin", "ppl")}  # fmt: skip
        if m in ("none", "context"):  # the weights are the pretrained ones
            mean["ppl"] = base_ppl
        mean["ppl_change"] = mean["ppl"] - base_ppl
        out[m] = {"mean": mean, "acc_per_seed": [c["results"]["acc"] for c in rs],
                  "wall_s": sum(c["wall_s"] for c in rs),
                  "cpu_s": sum(c.get("cpu_s", 0.0) for c in rs)}  # fmt: skip
    return out


def knowledge_report(report: dict[str, Any]) -> str:
    """The markdown of ``results.md``."""
    cfg, summ = report["config"], report["summary"]
    n_q = 3 * cfg["n_entities"]
    ex = report["example"]
    rows = []
    for m, s in summ.items():
        v = s["mean"]
        rows.append([m, f"{100 * v['acc']:.1f}", f"{100 * v['acc_norm']:.1f}",
                     f"{v['margin']:+.2f}", f"{v['ppl']:.3f}", f"{v['ppl_change']:+.3f}",
                     f"{s['wall_s']:.0f}", f"{s['cpu_s']:.0f}"])  # fmt: skip
    md = [
        "# Knowledge incorporation",
        "",
        f"Model: {report['source'] or 'given model'}; seeds {cfg['seeds']}; {cfg['n_entities']} "
        f"fictional biographies and {n_q} {cfg['n_options']}-way questions per seed (chance "
        f"{100 / cfg['n_options']:.0f}%). Fine-tuning: {cfg['ft_steps']} AdamW steps, lr "
        f"{cfg['ft_lr']}. Hope-k: periods {cfg['periods']}[:k], level lr {cfg['level_lr']}, "
        f"{cfg['passes']} pass(es) over the documents. Corpus perplexity: embedded corpus, "
        f"validation split, {cfg['ppl_tokens']} tokens in windows of {cfg['ppl_window']} "
        f"(before: {report['base_ppl']:.3f}).",
        "",
        markdown_table(
            ["method", "accuracy %", "acc_norm %", "answer margin (nats)", "corpus ppl",
             "ppl change", "wall s", "CPU s"],
            rows,
        ),  # fmt: skip
    ]
    md += [
        "",
        "Answer margin: the right option's log-likelihood minus the mean of the distractors', "
        "averaged over the questions (0 = no preference).",
        "",
        "Example document and question (seed " + str(cfg["seeds"][0]) + "):",
        "",
        "> " + ex["document"],
        "",
        "`"
        + ex["question"].replace("\n", " ")
        + "` options "
        + ", ".join(ex["options"])
        + f" (answer: {ex['options'][ex['answer']]})",
        "",
        "![knowledge](knowledge.png)",
        "",
    ]
    return "\n".join(md)


def plot_knowledge(summary: dict[str, Any], path: str | Path, chance: float = 0.25) -> Path:
    """Accuracy per method (bars, ``chance`` dashed) and corpus perplexity change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.0, 3.4))
    a1.bar(names, [100 * summary[m]["mean"]["acc"] for m in names], color="tab:green")
    a1.set_ylabel("accuracy (%)")
    a1.axhline(100 * chance, color="k", lw=0.8, ls="--", label="chance")
    a1.legend(fontsize=8)
    a1.set_title("multiple-choice accuracy")
    a2.bar(names, [summary[m]["mean"]["ppl_change"] for m in names], color="tab:gray")
    a2.set_ylabel("corpus perplexity change")
    a2.set_title("what the weights lost")
    for ax in (a1, a2):
        ax.tick_params(axis="x", labelsize=8, rotation=30)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
