"""The three ways a class-incremental run learns from its stream (``classify.py`` drives them).

``Learner`` (``icl``): the most recent demonstrations that fit the window are the context and
nothing else learns. :class:`HopeLearner` (``hope``): the MLPs stacked into CMS levels learn the
whole stream in context by eq. 71, and a plain Transformer++ holding the current fast weights
answers. :class:`EWCLearner` (``ewc``): the weights are fine-tuned on each task's demonstrations
with the elastic-weight-consolidation penalty of the earlier tasks, on the shared training step
(:func:`nestlearn.train.loop.finish_step`).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.nn.functional as F

from nestlearn.train.loop import finish_step, prepare_optimizer

__all__ = [
    "Demo",
    "EWCLearner",
    "HopeLearner",
    "Learner",
    "frozen_transformer",
    "reset_attention",
]


def reset_attention(model: torch.nn.Module, state: Any) -> Any:
    """``state`` with every attention cache emptied and everything else (CMS fast weights,
    recurrent states) kept: the window moves on, the fast weights stay."""
    from nestlearn.layers.attention import KVCache
    from nestlearn.models.skeleton import ModelState

    layers = []
    for ms, fs in state.layers:
        if isinstance(ms, KVCache):
            ms = KVCache(ms.k[:, :0], ms.v[:, :0], 0)
        layers.append((ms, fs))
    return ModelState(layers, state.position)


@dataclass
class Demo:
    cls: str
    prompt: list[int]
    label: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.label


class Learner:
    """ICL: the stream is context and nothing else."""

    def __init__(self, model: torch.nn.Module, window: int) -> None:
        self.model = model.eval()
        self.window = window
        self.demos: list[Demo] = []

    def observe(self, demos: list[Demo]) -> None:
        self.demos.extend(demos)

    def context_ids(self) -> list[int]:
        """The most recent demonstrations that fit in ``window`` tokens, oldest first."""
        out: list[int] = []
        for d in reversed(self.demos):
            if len(out) + len(d.ids) > self.window:
                break
            out = d.ids + out
        return out

    def base_state(self) -> Any:
        return self.model.init_state(1)

    @property
    def answer_model(self) -> torch.nn.Module:
        """The model that answers queries from :meth:`context_state`."""
        return self.model

    @torch.no_grad()
    def context_state(self) -> Any:
        state = self.base_state()
        ids = self.context_ids()
        if ids:
            dev = self.model.embed.weight.device
            _, state = self.model(torch.tensor([ids], device=dev), state=state)
        return state


class HopeLearner(Learner):
    """CMS levels (stacked MLPs) learn the whole stream in context by eq. 71."""

    def __init__(
        self, model: torch.nn.Module, window: int, *, periods: Sequence[int], lr: float,
        targets: str = "labels", call_len: int = 128,
    ) -> None:  # fmt: skip
        from nestlearn.pretrained.stacking import stack_levels

        super().__init__(stack_levels(model, periods, lr=lr, learn_lr=False, objective="ntp"),
                         window)  # fmt: skip
        self.base = model
        self.frozen = model
        if targets not in ("labels", "all"):
            raise ValueError(f"targets must be 'labels' or 'all', got {targets!r}")
        self.targets = targets
        self.step = math.gcd(*[int(p) for p in periods])
        self.chunk = max(self.step, (window // self.step) * self.step)
        # ntp_forward differentiates through the whole call (cost grows with its length for the
        # slow levels); calls of ``call_len`` tokens bound it, at the price of the gradient
        # paths through earlier calls' tokens (ntp_forward's docstring)
        self.call_len = max(self.step, (min(call_len, self.chunk) // self.step) * self.step)
        self.state = self.model.init_state(1)
        self.pending: list[tuple[int, int]] = []  # (token, target) not yet read
        self.win_tokens = 0

    def observe(self, demos: list[Demo]) -> None:
        super().observe(demos)
        for d in demos:
            ids, n = d.ids, len(d.prompt)
            for j, tok in enumerate(ids):
                scored = j + 1 < len(ids) and (self.targets == "all" or j + 1 >= n)
                self.pending.append((tok, ids[j + 1] if scored else -100))
        # read whole calls (aligned to the CMS grid) and keep the remainder for later
        while len(self.pending) >= self.call_len:
            part, self.pending = self.pending[: self.call_len], self.pending[self.call_len :]
            self._read(part)

    def _read(self, part: list[tuple[int, int]]) -> None:
        """One ``ntp_forward`` call; the attention cache is emptied every ``window`` tokens."""
        from nestlearn.models.ntp import ntp_forward

        dev = self.model.embed.weight.device
        idx = torch.tensor([[t for t, _ in part]], device=dev)
        tgt = torch.tensor([[g for _, g in part]], device=dev)
        if self.win_tokens + len(part) > self.chunk:  # the window moves on
            self.state, self.win_tokens = reset_attention(self.model, self.state), 0
        self.win_tokens += len(part)
        out = ntp_forward(self.model, idx, tgt, state=self.state, first_order=True)
        self.state = out.state.detach()

    def flush(self) -> None:
        """Read the remainder (padded to the CMS grid with unscored tokens)."""
        if not self.pending:
            return
        part = self.pending
        part = part + [(part[-1][0], -100)] * ((-len(part)) % self.step)
        self.pending = []
        for s in range(0, len(part), self.call_len):
            self._read(part[s : s + self.call_len])

    def context_state(self) -> Any:
        """The window read by a plain Transformer++ whose MLPs hold the current fast weights."""
        self.flush()
        self.frozen = frozen_transformer(self.model, self.state, self.base)
        plain = Learner(self.frozen, self.window)
        plain.demos = self.demos
        return plain.context_state()

    @property
    def answer_model(self) -> torch.nn.Module:
        return self.frozen


@torch.no_grad()
def frozen_transformer(
    stacked: torch.nn.Module, state: Any, original: torch.nn.Module
) -> torch.nn.Module:
    """``original`` (the pretrained model) with each MLP replaced by its CMS level's current
    fast weights ``W_0 + delta - eta * grad``: the pending sum of the level's current chunk is
    applied, as at a chunk boundary (the stream has ended). Plain calls to the stacked model do
    not update its levels (``objective="ntp"``), so answering queries with this copy is the same
    computation without the CMS bookkeeping, and as fast as the original."""
    out = copy.deepcopy(original)
    for i, (blk, (_, fs)) in enumerate(zip(stacked.blocks, state.layers)):
        cms = blk.ffn
        if len(cms.levels) != 1:
            raise ValueError("frozen_transformer expects one CMS level per block (stack_levels)")
        level, ls = cms.levels[0], fs.levels[0]
        eta = float(cms.lrs()[0]) / cms.periods[0]
        keep = 1.0 - cms.cfg.retention  # the boundary's retention (0 for stacked levels)
        w_in, w_out = (w.clone() for w in level.weights())
        if ls.delta is not None:
            w_in += keep * ls.delta[0][0].to(w_in.dtype)
            w_out += keep * ls.delta[1][0].to(w_out.dtype)
        if ls.grad is not None:
            w_in -= eta * ls.grad[0][0].to(w_in.dtype)
            w_out -= eta * ls.grad[1][0].to(w_out.dtype)
        ffn = out.blocks[i].ffn
        h = ffn.w_gate.weight.shape[0]
        ffn.w_gate.weight.copy_(w_in[:h])
        ffn.w_up.weight.copy_(w_in[h:])
        ffn.w_down.weight.copy_(w_out)
    return out.eval()


def _ewc_diverged(step: int, loss: float, gnorm: float) -> NoReturn:
    raise FloatingPointError(
        f"EWC fine-tuning diverged at step {step + 1}: loss {loss}, gradient norm {gnorm}; "
        "lower --ewc-lr"
    )


class EWCLearner(Learner):
    """Fine-tuning on each task's demonstrations with an EWC penalty on the earlier tasks."""

    def __init__(
        self, model: torch.nn.Module, window: int, *, lr: float, epochs: int, batch_size: int,
        ewc_lambda: float, seed: int,
    ) -> None:  # fmt: skip
        super().__init__(model, window)
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.opt = torch.optim.AdamW(self.params.values(), lr=lr, weight_decay=0.0)
        prepare_optimizer(self.model, self.opt)  # cms.mode=outer (docs/cms.md)
        self.epochs, self.batch_size, self.lam = epochs, batch_size, ewc_lambda
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.rng = random.Random(seed)
        self.steps = 0  # optimizer steps over all tasks so far

    def _loss(self, demos: list[Demo]) -> torch.Tensor:
        dev = self.model.embed.weight.device
        T = max(len(d.ids) for d in demos)
        idx = torch.zeros(len(demos), T, dtype=torch.long, device=dev)
        tgt = torch.full((len(demos), T), -100, dtype=torch.long, device=dev)
        for i, d in enumerate(demos):
            idx[i, : len(d.ids)] = torch.tensor(d.ids)
            n = len(d.prompt)
            tgt[i, n - 1 : n - 1 + len(d.label)] = torch.tensor(d.label)
        logits, _ = self.model(idx)
        return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-100)

    def observe(self, demos: list[Demo]) -> None:
        super().observe(demos)
        self.model.train()
        order = list(demos)
        self.opt.zero_grad(set_to_none=True)
        for _ in range(self.epochs):
            self.rng.shuffle(order)
            for s in range(0, len(order), self.batch_size):
                loss = self._loss(order[s : s + self.batch_size])
                if self.fisher:
                    pen = sum(
                        (self.fisher[n] * (p - self.anchor[n]).pow(2)).sum()
                        for n, p in self.params.items()
                    )
                    loss = loss + 0.5 * self.lam * pen
                loss.backward()
                finish_step(self.opt, self.params.values(), step=self.steps, grad_clip=1.0,
                            loss=float(loss.detach()), on_diverged=_ewc_diverged)  # fmt: skip
                self.steps += 1
        # diagonal empirical Fisher of this task, one demonstration at a time, summed over tasks
        self.model.eval()
        fisher = {n: torch.zeros_like(p) for n, p in self.params.items()}
        for d in demos:
            self.model.zero_grad(set_to_none=True)
            self._loss([d]).backward()
            for n, p in self.params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach().pow(2) / len(demos)
        self.model.zero_grad(set_to_none=True)
        for n in fisher:
            self.fisher[n] = self.fisher.get(n, 0) + fisher[n]
            self.anchor[n] = self.params[n].detach().clone()
