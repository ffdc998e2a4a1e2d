"""Effect of levels: stacked CMS levels on long documents (arXiv 2512.24695 §9.1, Fig. 7).

A pretrained Transformer++ (SmolLM2-135M by default) reads a long document, then answers
multiple-choice questions about it **after the document has left its attention window**, so
only weights that learned while reading can carry the answer. Protocol (``docs/levels.md``):

* **Reading.** The document streams through the model in windows of ``window`` tokens: the
  attention cache is emptied at each window boundary (``reset_attention``), the CMS fast weights
  carry on. With ``K >= 1`` levels the MLPs are stacked into CMS levels (``stack_levels``,
  objective ``ntp``: eq. 71 with the model's next-token gradient on every document token) with
  the update periods of :func:`level_periods`; with ``K = 0`` nothing learns (ICL).
* **Asking.** After the whole document, the attention cache is empty and each question is read
  by a plain Transformer++ holding the levels' current fast weights (``frozen_transformer``);
  for ``K = 0`` that is the pretrained model, which sees the question alone.
* **Scoring.** Each option's summed log-likelihood as a continuation of the question; the
  highest wins (ties go to the first). Accuracy = fraction of questions right.
* **Reference row.** ``in context``: the pretrained model with the whole document in its
  attention before the question (no window): what the model can do when it sees the record.

Tasks: ``longhealth`` (generated patient records, :mod:`nestlearn.data.synthetic.records`) and
``mk_niah`` (RULER MK-NIAH-1, :mod:`nestlearn.data.synthetic.niah`: four needles with different
keys; each key is asked in turn and the options are the four needles' values, so the
distractors are in the document too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from nestlearn.studies.continual.classify import frozen_transformer, reset_attention

logger = logging.getLogger(__name__)

__all__ = [
    "TASKS",
    "Item",
    "LevelsConfig",
    "build_items",
    "choose",
    "level_periods",
    "option_logliks",
    "read_document",
    "run_cell",
    "window_loss",
]

TASKS = ("longhealth", "mk_niah")


@dataclass
class LevelsConfig:
    """Sizes of the levels experiment (the command's options)."""

    tasks: tuple[str, ...] = TASKS
    doc_length: int = 1536
    """Tokens per patient record (``longhealth``)."""
    num_docs: int = 2
    """Patient records (``longhealth``)."""
    num_questions: int = 7
    """Questions per record (1..7)."""
    niah_lengths: tuple[int, ...] = (2048,)
    """MK-NIAH haystack lengths in tokens (2048, 4096 and 8192 are the paper's scale)."""
    num_niah: int = 1
    """MK-NIAH haystacks per length (four questions each: every key is asked)."""
    levels: tuple[int, ...] = (0, 1, 2, 3)
    """Numbers of stacked levels; 0 = ICL (nothing learns)."""
    periods: tuple[int, ...] = (256, 1024)
    """Lowest-frequency update periods (tokens): one curve per value."""
    ratio: int = 2
    """Period ratio between consecutive levels (level ``i`` of ``K`` has ``P / ratio**(K-1-i)``)."""
    window: int = 512
    """Attention window while reading (tokens)."""
    level_lr: float = 0.1
    """Per-token inner learning rate of the levels (``eta = lr / period``, eq. 71); 1.0
    diverges when every document token is a target (docs/levels.md)."""
    call_len: int = 128
    """Tokens per ``ntp_forward`` call while reading (bounds its cost; see docs/continual.md)."""
    in_context: bool = True
    """Also score the ``in context`` reference row."""
    seed: int = 0

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        self.niah_lengths = tuple(int(x) for x in self.niah_lengths)
        self.levels = tuple(int(x) for x in self.levels)
        self.periods = tuple(int(x) for x in self.periods)
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ValueError(f"unknown task(s) {bad or self.tasks}; choose from {', '.join(TASKS)}")
        if any(k < 0 or k > 8 for k in self.levels) or not self.levels:
            raise ValueError(f"levels must be counts in 0..8, got {list(self.levels)}")
        for name in ("doc_length", "num_docs", "num_niah", "window", "call_len", "ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.num_questions <= 7:
            raise ValueError(f"num_questions must be 1..7, got {self.num_questions}")
        if self.window % self.call_len:
            raise ValueError(
                f"window ({self.window}) must be a multiple of call_len ({self.call_len}); "
                f"try window={max(1, self.window // self.call_len) * self.call_len}"
            )
        if self.level_lr < 0:
            raise ValueError(f"level_lr must be >= 0, got {self.level_lr}")
        if any(k > 0 for k in self.levels):
            if not self.periods:
                raise ValueError("periods is empty; give at least one lowest period, e.g. 256")
            for k in (k for k in self.levels if k > 0):
                for p in self.periods:
                    level_periods(k, p, self.ratio)  # validates divisibility


def level_periods(n_levels: int, lowest: int, ratio: int = 2) -> list[int]:
    """Update periods of ``n_levels`` levels whose lowest frequency has period ``lowest``,
    fastest first: ``[lowest / ratio**(K-1), ..., lowest / ratio, lowest]``."""
    if n_levels < 1:
        raise ValueError(f"n_levels must be at least 1, got {n_levels}")
    top = ratio ** (n_levels - 1)
    if lowest < 1 or lowest % top:
        raise ValueError(
            f"the lowest period {lowest} must be a positive multiple of {top} for {n_levels} "
            f"levels at ratio {ratio}; try {max(top, (lowest // top) * top)}"
        )
    return [lowest // ratio ** (n_levels - 1 - i) for i in range(n_levels)]


@dataclass
class Item:
    """One document and its questions, as token ids."""

    task: str
    length: int
    index: int
    doc: list[int]
    prompts: list[list[int]]
    options: list[list[list[int]]]
    answers: list[int]
    kinds: list[str] = field(default_factory=list)
    fact_tokens: list[int] = field(default_factory=list)
    """Token offset (in ``doc``) where each answer is stated (-1 when unknown)."""


def build_items(tokenizer: Any, task: str, length: int, num: int, *, seed: int = 0,
                num_questions: int = 7) -> list[Item]:  # fmt: skip
    """``num`` documents of ``task`` at ``length`` tokens, tokenized (deterministic)."""
    from nestlearn.data.synthetic.niah import niah_sample
    from nestlearn.data.synthetic.records import record_sample

    eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    items = []
    for i in range(num):
        if task == "longhealth":
            rec = record_sample(tokenizer, length, i, seed=seed, num_questions=num_questions)
            doc = eos + tokenizer.encode(rec.document)
            qs = rec.questions
            items.append(Item(
                task, length, i, doc, [tokenizer.encode(q.prompt) for q in qs],
                [[tokenizer.encode(o) for o in q.options] for q in qs], [q.answer for q in qs],
                [q.kind for q in qs],
                [len(eos) + len(tokenizer.encode(rec.document[: q.fact_char]))
                 if q.fact_char >= 0 else -1 for q in qs],
            ))  # fmt: skip
        elif task == "mk_niah":
            from nestlearn.data.synthetic.niah import NIAH_TASKS, _template

            s = niah_sample("mk_niah_1", tokenizer, length, i, seed=seed, max_new_tokens=0)
            end = int(s.meta["context_end"])
            ids = [int(x) for x in s.input_ids]
            opts = [tokenizer.encode(" " + v) for v in s.needle_values]
            # every key is asked in turn (RULER's queried key first), each an MK-NIAH-1
            # question whose options are the four needles' values: reading is the cost, asking
            # is cheap, so four questions per haystack instead of one
            keys = [s.queries[0]] + [k for k in s.needle_keys if k != s.queries[0]]
            prompts = [ids[end:]] + [
                tokenizer.encode(_template(NIAH_TASKS["mk_niah_1"], k)[1]) for k in keys[1:]
            ]
            answers = [s.needle_keys.index(k) for k in keys]
            items.append(Item(task, length, i, ids[:end], prompts, [opts] * len(keys), answers,
                              ["needle"] * len(keys),
                              [s.needles[a].token_start for a in answers]))  # fmt: skip
        else:
            raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return items


# ------------------------------------------------------------------ reading and scoring
@torch.no_grad()
def option_logliks(model: torch.nn.Module, state: Any, prompt: list[int],
                   options: list[list[int]]) -> list[float]:  # fmt: skip
    """Summed log-likelihood of each option (token ids) as a continuation of ``prompt``,
    starting from ``state`` (``None``: an empty context). ``state`` is not modified."""
    dev = model.embed.weight.device
    logits, st = model(torch.tensor([prompt], device=dev), state=state, return_state=True)
    first = torch.log_softmax(logits[0, -1].float(), -1)
    out = []
    for opt in options:
        if not opt:
            raise ValueError("an option encodes to no tokens")
        total = float(first[opt[0]])
        if len(opt) > 1:
            lg, _ = model(torch.tensor([opt[:-1]], device=dev), state=st)
            lp = torch.log_softmax(lg[0].float(), -1)
            total += float(lp[torch.arange(len(opt) - 1), torch.tensor(opt[1:])].sum())
        out.append(total)
    return out


def window_loss(base: torch.nn.Module, doc: list[int], *, window: int, call_len: int) -> float:
    """Mean next-token loss of ``doc`` read by ``base`` in the same calls and windows as
    :func:`read_document`, nothing learning: the ICL reference for the reading loss."""
    dev = base.embed.weight.device
    ids, tgt = list(doc), list(doc[1:]) + [-100]
    state, in_window, total, count = base.init_state(1), 0, 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids), call_len):
            part = ids[s : s + call_len]
            if in_window + len(part) > window:
                state, in_window = reset_attention(base, state), 0
            in_window += len(part)
            logits, state = base(torch.tensor([part], device=dev), state=state)
            t = torch.tensor(tgt[s : s + call_len], device=dev)
            keep = t >= 0
            if keep.any():
                lp = torch.log_softmax(logits[0].float(), -1)
                total -= float(lp[keep.nonzero()[:, 0], t[keep]].sum())
                count += int(keep.sum())
    return total / max(count, 1)


def choose(logliks: Sequence[float]) -> int:
    """The option with the highest log-likelihood; a tie goes to the first."""
    return max(range(len(logliks)), key=lambda j: (logliks[j], -j))


def read_document(base: torch.nn.Module, doc: list[int], periods: Sequence[int], *,
                  lr: float, window: int, call_len: int) -> tuple[torch.nn.Module, float]:  # fmt: skip
    """Stream ``doc`` through ``base`` with stacked levels of ``periods`` learning by eq. 71
    (attention cache emptied every ``window`` tokens); return the plain Transformer++ that
    holds the levels' fast weights after the document (the pending chunk applied) and the mean
    next-token loss of the document while it was read (each token predicted before the levels
    learned from it)."""
    from nestlearn.models.ntp import ntp_forward
    from nestlearn.pretrained.stacking import stack_levels

    model = stack_levels(base, periods, lr=lr, learn_lr=False, objective="ntp").eval()
    dev = model.embed.weight.device
    # calls need not align with the levels' chunks: ntp_forward splits its segments on the
    # position grid; the last token has no target (the question is not part of the stream)
    ids, tgt = list(doc), list(doc[1:]) + [-100]
    call = call_len
    state = model.init_state(1)
    in_window, total, count = 0, 0.0, 0
    for s in range(0, len(ids), call):
        part = ids[s : s + call]
        if in_window + len(part) > window:  # the window moves on; fast weights stay
            state, in_window = reset_attention(model, state), 0
        in_window += len(part)
        t = tgt[s : s + call]
        out = ntp_forward(model, torch.tensor([part], device=dev), torch.tensor([t], device=dev),
                          state=state, first_order=True)  # fmt: skip
        state = out.state.detach()
        n = sum(1 for x in t if x >= 0)
        total += float(out.loss.detach()) * n
        count += n
    return frozen_transformer(model, state, base), total / max(count, 1)


def run_cell(base: torch.nn.Module, items: Sequence[Item], n_levels: int, period: int | None,
             cfg: LevelsConfig, *, mode: str = "window",
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Accuracy of one (levels, period) setting on ``items``.

    ``mode``: ``window`` (the protocol above) or ``context`` (the whole document in attention,
    nothing learns). Returns accuracy, per-question correctness and log-likelihoods, wall time.
    """
    if mode not in ("window", "context"):
        raise ValueError(f"mode must be 'window' or 'context', got {mode!r}")
    t0 = time.perf_counter()
    base = base.eval()
    dev = base.embed.weight.device
    periods = level_periods(n_levels, int(period), cfg.ratio) if n_levels > 0 else []
    rows, losses = [], []
    for it in items:
        state = None
        model = base
        if mode == "context":
            with torch.no_grad():
                _, state = base(torch.tensor([it.doc], device=dev), return_state=True)
        elif n_levels > 0:
            model, loss = read_document(base, it.doc, periods, lr=cfg.level_lr,
                                        window=cfg.window, call_len=cfg.call_len)  # fmt: skip
            losses.append(loss)
        else:
            losses.append(window_loss(base, it.doc, window=cfg.window, call_len=cfg.call_len))
        for q, (prompt, opts, ans) in enumerate(zip(it.prompts, it.options, it.answers)):
            ll = option_logliks(model, state, prompt, opts)
            pred = choose(ll)
            rows.append({"index": it.index, "question": q, "kind": it.kinds[q] if it.kinds else "",
                         "answer": ans, "pred": pred, "correct": pred == ans,
                         "loglik": [round(x, 4) for x in ll]})  # fmt: skip
        if progress:
            done = sum(r["correct"] for r in rows)
            progress(f"  document {it.index + 1}/{len(items)}: {done}/{len(rows)} right "
                     f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    n = len(rows)
    return {
        "levels": n_levels, "period": period, "periods": periods, "mode": mode,
        "accuracy": sum(r["correct"] for r in rows) / n if n else float("nan"),
        "n_questions": n, "questions": rows, "wall_time_s": time.perf_counter() - t0,
        "reading_loss": sum(losses) / len(losses) if losses else None,
        "stream_tokens": sum(len(it.doc) for it in items) if (n_levels or mode == "context") else 0,
    }  # fmt: skip


def cell_key(task: str, length: int, n_levels: int, period: int | None, mode: str) -> str:
    """File stem of a cell: ``longhealth-1536-L2-P256``, ``mk_niah-2048-context``."""
    if mode == "context":
        return f"{task}-{length}-context"
    return f"{task}-{length}-L{n_levels}" + (f"-P{period}" if n_levels else "")


def settings_of(
    cfg: LevelsConfig, task: str, n_levels: int = 1, mode: str = "window"
) -> dict[str, Any]:
    """What a finished cell must match to be reused (only the settings that change it)."""
    d: dict[str, Any] = {"seed": cfg.seed}
    if task == "longhealth":
        d.update(num=cfg.num_docs, num_questions=cfg.num_questions)
    else:
        d.update(num=cfg.num_niah)
    if mode == "window":
        d.update(window=cfg.window, call_len=cfg.call_len)
        if n_levels > 0:
            d.update(level_lr=cfg.level_lr, ratio=cfg.ratio)
    return d
