"""Test-time learning with stacked CMS levels, shared by ``ctnl`` and ``knowledge``.

:class:`LevelStream` is SmolLM2 (or any ``transformer`` model) turned into Hope-Attention by ad-hoc
level stacking (§7.3, :func:`~nestlearn.pretrained.stacking.stack_levels`, ``objective="ntp"``):
while it reads a token stream every MLP is a CMS level that learns in context by eq. 71
(``W <- W - (lr / C) * sum over the chunk of the next-token gradient``). The stream is read in
calls of ``call_len`` tokens (the state detached between calls, as in
:class:`~nestlearn.studies.continual.classify.HopeLearner`); the attention cache is emptied every
``window`` tokens, while the fast weights carry on. :meth:`LevelStream.snapshot` returns a plain
Transformer++ whose MLPs hold the current fast weights (the pending chunk sums applied, as at a
boundary): reading a prompt with it is reading without learning, at the original's cost.

Also here: the attention context a method answers with (:func:`window_ids`, :func:`prefill`),
greedy decoding up to a stop token (:func:`greedy`) and option log-likelihoods
(:func:`option_logprobs`).

``Hope-k`` is the stacked model with ``k`` distinct update periods, ``periods[:k]`` assigned to
the blocks cyclically over depth (block ``l`` gets ``periods[l % k]``): ``k`` levels of
different frequency, each pretrained MLP in its own place. ``k = 0`` is the pretrained model
with static MLPs (ICL).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nestlearn.studies.continual.classify import frozen_transformer, reset_attention
from nestlearn.utils.files import atomic_write_text as write_text_atomic

__all__ = [
    "CellStore",
    "check_levels",
    "run_cell",
    "write_results",
    "LevelStream",
    "greedy",
    "hope_periods",
    "newline_ids",
    "option_logprobs",
    "prefill",
    "save_figure",
    "window_ids",
    "write_text_atomic",
]


def hope_periods(k: int, periods: Sequence[int]) -> tuple[int, ...]:
    """The update periods of Hope-``k``: the first ``k`` of ``periods``."""
    if not 1 <= k <= len(periods):
        raise ValueError(f"Hope-{k} needs 1 <= k <= {len(periods)} (the periods given: "
                         f"{list(periods)}); pass more periods or fewer levels")  # fmt: skip
    return tuple(int(p) for p in periods[:k])


class LevelStream:
    """A stacked copy of ``model`` whose levels learn from the tokens it reads."""

    def __init__(
        self, model: torch.nn.Module, periods: Sequence[int], lr: float, *, window: int,
        call_len: int = 128,
    ) -> None:  # fmt: skip
        from nestlearn.pretrained.stacking import stack_levels

        if lr < 0:
            raise ValueError(f"level lr must be >= 0, got {lr}")
        self.base = model
        self.model = stack_levels(model, periods, lr=lr, learn_lr=False, objective="ntp").eval()
        self.step = math.gcd(*[int(p) for p in periods])
        self.window = max(self.step, (window // self.step) * self.step)
        self.call_len = max(self.step, (min(call_len, self.window) // self.step) * self.step)
        self.state = self.model.init_state(1)
        self.pending: list[tuple[int, int]] = []
        self.win_tokens = 0
        self.tokens_read = 0

    def read(self, ids: Sequence[int], targets: Sequence[int] | None = None) -> None:
        """Queue ``ids`` with their next-token ``targets`` (``-100``: not learned from; default:
        the next id, the last one's target being the next id read) and learn from every whole
        call now queued. The last token stays queued, so its target can still be set."""
        ids = [int(t) for t in ids]
        if targets is None:
            targets = ids[1:] + [-100]
            if self.pending and self.pending[-1][1] == -100 and ids:
                self.pending[-1] = (self.pending[-1][0], ids[0])
        elif len(targets) != len(ids):
            raise ValueError(f"{len(targets)} targets for {len(ids)} ids")
        self.pending += list(zip(ids, (int(t) for t in targets)))
        while len(self.pending) > self.call_len:
            part, self.pending = self.pending[: self.call_len], self.pending[self.call_len :]
            self._call(part)

    def _call(self, part: list[tuple[int, int]]) -> None:
        from nestlearn.models.ntp import ntp_forward

        dev = self.model.embed.weight.device
        idx = torch.tensor([[t for t, _ in part]], device=dev)
        tgt = torch.tensor([[g for _, g in part]], device=dev)
        if self.win_tokens + len(part) > self.window:  # the attention window moves on
            self.state, self.win_tokens = reset_attention(self.model, self.state), 0
        self.win_tokens += len(part)
        self.tokens_read += len(part)
        out = ntp_forward(self.model, idx, tgt, state=self.state, first_order=True)
        self.state = out.state.detach()

    def flush(self) -> None:
        """Read what is queued, padded to the CMS grid with tokens that are not learned from."""
        if not self.pending:
            return
        part = self.pending + [(self.pending[-1][0], -100)] * ((-len(self.pending)) % self.step)
        self.pending = []
        for s in range(0, len(part), self.call_len):
            self._call(part[s : s + self.call_len])

    def new_context(self) -> None:
        """Read what is queued, then empty the attention cache (a task boundary); the fast
        weights carry on."""
        self.flush()
        self.state, self.win_tokens = reset_attention(self.model, self.state), 0

    def snapshot(self) -> torch.nn.Module:
        """A plain copy of the original model with the levels' current fast weights."""
        self.flush()
        return frozen_transformer(self.model, self.state, self.base)


def window_ids(lines: Sequence[list[int]], window: int) -> list[int]:
    """The most recent whole ``lines`` (token lists) that fit in ``window`` tokens, in order."""
    out: list[int] = []
    for line in reversed(lines):
        if len(out) + len(line) > window:
            break
        out = list(line) + out
    return out


@torch.no_grad()
def prefill(model: torch.nn.Module, ids: Sequence[int], chunk: int = 512) -> Any:
    """The model's state after reading ``ids`` (in calls of ``chunk`` tokens); a fresh state
    when ``ids`` is empty."""
    dev = model.embed.weight.device
    state = model.init_state(1)
    for s in range(0, len(ids), chunk):
        _, state = model(torch.tensor([list(ids[s : s + chunk])], device=dev), state=state)
    return state


@torch.no_grad()
def greedy(
    model: torch.nn.Module, state: Any, prompt: Sequence[int], max_new: int,
    stop: set[int] | frozenset[int] = frozenset(),
) -> list[int]:  # fmt: skip
    """Greedy continuation of ``prompt`` after ``state``, up to (without) the first token in
    ``stop``; at most ``max_new`` tokens. ``state`` is not changed."""
    dev = model.embed.weight.device
    logits, st = model(torch.tensor([list(prompt)], device=dev), state=state)
    out: list[int] = []
    for _ in range(max_new):
        tok = int(logits[0, -1].argmax())
        if tok in stop:
            break
        out.append(tok)
        logits, st = model(torch.tensor([[tok]], device=dev), state=st)
    return out


@torch.no_grad()
def option_logprobs(
    model: torch.nn.Module, state: Any, prompt: Sequence[int], options: Sequence[Sequence[int]]
) -> list[float]:
    """``log p(option | state, prompt)`` summed over each option's tokens. ``state`` is not
    changed; the prompt is read once and every option continues from it."""
    dev = model.embed.weight.device
    logits, st = model(torch.tensor([list(prompt)], device=dev), state=state)
    first = F.log_softmax(logits[0, -1].float(), dim=-1)
    out = []
    for opt in options:
        if not opt:
            raise ValueError("an option encodes to no tokens")
        lp = float(first[opt[0]])
        if len(opt) > 1:
            lo, _ = model(torch.tensor([list(opt[:-1])], device=dev), state=st)
            logp = F.log_softmax(lo[0].float(), dim=-1)
            lp += float(logp.gather(1, torch.tensor(opt[1:], device=dev)[:, None]).sum())
        out.append(lp)
    return out


# ------------------------------------------------------------------ resumable results
class CellStore:
    """Finished cells of a study, one JSON file each under ``out/cells/``, written atomically.

    A cell is reused only when the settings it depends on (``keys`` of ``settings``; all of
    them by default) are the ones it was computed with, so an interrupted run resumes, a changed
    run recomputes what the change affects, and, e.g., a new Hope level rate keeps the ICL cells.
    """

    def __init__(self, out: str | Path, settings: dict[str, Any]) -> None:
        self.dir = Path(out) / "cells"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.settings = json.loads(json.dumps(settings))  # JSON-shaped (tuples as lists)

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def get(self, name: str, keys: Sequence[str] | None = None) -> dict[str, Any] | None:
        """The stored cell ``name``, or ``None`` when missing, damaged or computed with other
        values of ``keys``."""
        p = self.path(name)
        if not p.is_file():
            return None
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        have = d.get("settings")
        if not isinstance(have, dict):
            return None
        keys = list(self.settings) if keys is None else list(keys)
        missing = object()
        if any(have.get(k, missing) != self.settings.get(k, missing) for k in keys):
            return None
        return d

    def put(self, name: str, cell: dict[str, Any]) -> dict[str, Any]:
        from nestlearn.data.prepare import atomic_write_json

        cell = {**cell, "settings": self.settings}
        atomic_write_json(self.path(name), cell)
        return cell


def run_cell(
    store: CellStore,
    name: str,
    keys: Sequence[str],
    fixed: dict[str, Any],
    compute: Callable[[], dict[str, Any]],
    say: Callable[[str], None],
    *,
    start: str,
    done: Callable[[str, dict[str, Any]], str],
) -> dict[str, Any]:
    """Cell ``name`` of a study: the stored one when its ``keys`` settings match (said as
    reused), else ``compute()``'s results stored as ``{**fixed, "results": ..., "wall_s",
    "cpu_s"}``. ``start`` is said before computing, ``done(name, cell)`` after."""
    cell = store.get(name, keys)
    if cell is not None:
        say(f"{name}: reusing {store.path(name)}")
        return cell
    t0, c0 = time.perf_counter(), time.process_time()
    say(start)
    res = compute()
    cell = store.put(name, {**fixed, "results": res, "wall_s": time.perf_counter() - t0,
                            "cpu_s": time.process_time() - c0})  # fmt: skip
    say(done(name, cell))
    return cell


def write_results(out: Path, report: dict[str, Any], markdown: str) -> None:
    """``out/results.json`` (the report) and ``out/results.md``, each written atomically."""
    from nestlearn.data.prepare import atomic_write_json

    atomic_write_json(out / "results.json", report)
    write_text_atomic(out / "results.md", markdown)


def check_levels(
    seeds: Sequence[int], levels: Sequence[int], periods: Sequence[int], *, lowest: int, meaning: str
) -> None:
    """The checks of a Hope-levels study's ``seeds``, ``levels`` (each in ``lowest..len(periods)``,
    ``meaning`` says what they are; at least one when ``lowest`` is 0) and ``periods``."""
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed, e.g. 0")
    if (lowest == 0 and not levels) or any(k < lowest or k > len(periods) for k in levels):
        raise ValueError(f"levels must be in {lowest}..{len(periods)} ({meaning}), got {levels}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"levels repeats a value: {levels}")
    if any(p < 1 for p in periods):
        raise ValueError(f"periods must be positive token counts, got {periods}")


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save a matplotlib figure atomically (PNG) and close it; the path."""
    import os

    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)
    return path


def newline_ids(tokenizer: Any, vocab_size: int) -> set[int]:
    """Token ids whose text contains a newline (decoding stops at any of them)."""
    out = set()
    for i in range(vocab_size):
        try:
            if "\n" in tokenizer.decode([i]):
                out.add(i)
        except (KeyError, ValueError, IndexError):
            continue
    return out
