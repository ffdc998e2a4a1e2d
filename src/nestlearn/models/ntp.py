"""The exact next-token driver of CMS levels with ``objective="ntp"`` (NL eq. 71).

A Continuum Memory System level with ``objective="ntp"`` learns in context from the gradient of
the *model's* next-token loss w.r.t. its fast weights, which the level cannot compute on its own
(it needs the whole network above it and the next token). :func:`ntp_forward` computes it: it
runs the language model in segments on the finest boundary grid ``S`` (the gcd of every such
level's period), differentiates each segment's summed next-token loss w.r.t. every level's
current fast weights with ``torch.autograd.grad`` and deposits the sums in the state; each level
applies ``eta * sum`` at its next boundary. The derivative runs through the call's whole graph,
so it includes the paths through earlier tokens of the same chunk (attention, memory states).

:class:`~nestlearn.models.skeleton.LanguageModel` routes every call through this driver while
such a level is active (not frozen), so training, evaluation, generation and the transformers
wrapper need no special code: ``model(idx)`` *is* the exact eq. 71.

**The last token of a call.** Its target is the next token, which a plain call does not know.
Its term is only applied at a boundary after it, i.e. after the next token has been read, so it
is not needed yet: the call returns an :class:`NTPState` that holds the token's logits (with
their graph) as :class:`NTPPending`, and the next call, whose first token is the target,
deposits the term before its first boundary. The state also keeps the autograd graph of the
open chunks, so a stream split into calls at any points (prefill + token-by-token decode
included) equals one call. Outside ``torch.enable_grad`` the driver cuts that graph at every
multiple of ``L`` (the lcm of the periods), where every level starts a new chunk and no later
inner gradient can reach an earlier token: memory stays bounded by ``L`` tokens of graph.

Axis legend: B batch, T tokens, V vocabulary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from nestlearn.memory.cms import CMSState, ContinuumMemory
from nestlearn.models.skeleton import ModelState
from nestlearn.ops.cms.common import add
from nestlearn.utils.dtypes import compute_dtype

__all__ = [
    "NTPOutput",
    "NTPPending",
    "NTPState",
    "driven_forward",
    "ntp_forward",
    "ntp_modules",
    "uses_ntp",
]


class NTPPending(NamedTuple):
    """The next-token term of a call's last token, waiting for its target (the next token)."""

    logits: Tensor
    """``[B, V]`` the token's logits, with the autograd graph back to the fast weights."""
    weights: tuple[Tensor, ...]
    """Every ``objective="ntp"`` level's fast weights the logits were computed with
    (``dW_in, dW_out`` per level, blocks in order): the tensors the term is taken against."""
    position: int
    """Position of the target token (the state's position when the term was left pending)."""


@dataclasses.dataclass
class NTPState(ModelState):
    """A :class:`ModelState` whose last token's next-token term is still pending.

    ``detach()`` cuts the history of the layers' states (truncated backprop through time) but
    keeps ``pending``, which is inner-loop data: the next call still deposits the term exactly.
    The state cannot be saved to a file (``save_state`` refuses it): the term needs its graph.
    """

    pending: NTPPending | None = None

    def detach(self) -> NTPState:
        base = super().detach()
        return NTPState(base.layers, base.position, self.pending)


class NTPOutput(NamedTuple):
    logits: Tensor
    """``[B, T, V]``."""
    loss: Tensor
    """Mean next-token cross-entropy over the tokens that have a target in this call."""
    state: Any
    """The model state after the call (continue the sequence with it)."""


# ---------------------------------------------------------------------------- queries
def _block_cms(model: nn.Module) -> Iterator[ContinuumMemory]:
    for block in model.blocks:  # type: ignore[attr-defined]
        for mod in (block.mixer, block.ffn):
            if isinstance(mod, ContinuumMemory):
                yield mod


def ntp_modules(model: nn.Module) -> list[ContinuumMemory]:
    """The in-context CMS modules of ``model`` with ``objective="ntp"`` (frozen or not)."""
    return [m for m in _block_cms(model) if m.in_context and m.cfg.objective == "ntp"]


def uses_ntp(model: nn.Module) -> bool:
    """Whether calls of ``model`` run through the exact driver (an ``ntp`` level is active)."""
    return any(m.ntp_active for m in _block_cms(model))


@contextlib.contextmanager
def _driving(model: nn.Module) -> Iterator[None]:
    """Inside the driver, the model's own calls are plain (the re-entrancy guard)."""
    before = model.__dict__.get("_ntp_driving", False)
    model.__dict__["_ntp_driving"] = True
    try:
        yield
    finally:
        model.__dict__["_ntp_driving"] = before


# ----------------------------------------------------------------------------- driver
def driven_forward(
    model: nn.Module, idx: Tensor, *, state: ModelState | None, return_state: bool
) -> tuple[Tensor, ModelState | None]:
    """``LanguageModel.forward`` for a model with an active ``ntp`` level (same contract)."""
    out = ntp_forward(model, idx, state=state)
    if state is None and not return_state:
        return out.logits, None
    return out.logits, out.state


def ntp_forward(
    model: nn.Module,
    idx: Tensor,
    targets: Tensor | None = None,
    *,
    state: Any = None,
    first_order: bool | None = None,
) -> NTPOutput:
    """Run a LanguageModel whose CMS levels use ``objective="ntp"``: exact eq. 71.

    ``model(idx, ...)`` calls this itself (with ``targets=None``) whenever such a level is
    active; call it directly to learn from other targets, e.g. only some tokens (``-100``).

    With ``first_order=True`` the inner gradients are constants for the outer loss. With
    ``False`` they keep their graph (``create_graph``): ``loss.backward()`` is then the exact
    meta-gradient of the initial states and learning rates (checked against finite
    differences), and a slower level's inner gradient also counts its influence through the
    faster levels' updates inside its chunk (the total derivative of the unrolled computation).
    ``None`` follows the modules' ``meta_grad``. Under ``torch.no_grad()`` the graph the inner
    gradients need is built anyway (see the module docstring for how long it is kept); the
    returned logits and loss are detached.

    Args:
        model: a ``LanguageModel`` (``blocks[i].mixer`` / ``.ffn``, ``init_state``).
        idx: ``[B, T]`` token ids.
        targets: ``[B, T]`` next tokens (``-100`` = none). ``None``: ``idx[:, 1:]``, and the
            last token's term waits in the returned state for the next call's first token.
        state: a ``ModelState`` to continue (it may hold a pending term), or ``None``.

    Returns:
        :class:`NTPOutput` ``(logits [B, T, V], loss, state)``; the state is an
        :class:`NTPState` when a term is pending.
    """
    mods = ntp_modules(model)
    if not mods:
        raise ValueError("ntp_forward needs CMS modules with mode='in_context', objective='ntp'")
    active = [m for m in mods if not m.frozen]
    if first_order is None:
        first_order = all(m.cfg.meta_grad == "first_order" for m in (active or mods))
    B, T = idx.shape
    derived = targets is None
    periods = [p for m in mods for p in m.periods]
    S, L = math.gcd(*periods), math.lcm(*periods)
    keep_graph = torch.is_grad_enabled()
    pending = getattr(state, "pending", None)
    # fused attention kernels have no double backward; the math kernel does (create_graph)
    kernels = contextlib.nullcontext() if first_order else sdpa_kernel([SDPBackend.MATH])
    with torch.inference_mode(False), torch.enable_grad(), kernels, _driving(model):
        if idx.is_inference():  # saved for backward by the embedding
            idx = idx.clone()
        if targets is None:
            targets = torch.cat([idx[:, 1:], idx.new_full((B, 1), -100)], dim=1)
        elif targets.is_inference():
            targets = targets.clone()
        if state is None:
            state = model.init_state(B, device=idx.device)  # type: ignore[operator]
        state = ModelState(state.layers, state.position)
        if pending is not None and T > 0:
            state = _settle(model, state, pending, idx[:, 0], first_order)
            pending = None
        logits_all: list[Tensor] = []
        total: Tensor = torch.zeros((), device=idx.device)
        s0 = 0
        while s0 < T:
            p = state.position
            if not active:  # every ntp level is frozen: nothing to learn, read the rest plainly
                e = T
            else:
                if not keep_graph and p % L == 0:  # no later inner gradient reaches back here
                    state = state.detach()
                e = min(T, s0 + S - p % S)
                state = _map_ntp(model, state, lambda m, st: _materialize(m, st, B, idx.device))
            logits, state = model(idx[:, s0:e], state=state)
            tgt = targets[:, s0:e]
            lf = logits if logits.dtype == torch.float64 else logits.float()
            loss = F.cross_entropy(
                lf.flatten(0, 1), tgt.flatten(), reduction="sum", ignore_index=-100
            )
            scored = (e - s0 - int(e == T)) > 0 if derived else bool((tgt != -100).any())
            if active and scored:
                grads = torch.autograd.grad(loss, _fast_weights(model, state),
                                            create_graph=not first_order, retain_graph=True,
                                            allow_unused=True)  # fmt: skip
                state = _deposit(model, state, grads)
            if derived and e == T and active:
                pending = NTPPending(
                    logits[:, -1], tuple(_fast_weights(model, state)), state.position
                )
            logits_all.append(logits if keep_graph else logits.detach())
            total = total + (loss if keep_graph else loss.detach())
            s0 = e
    n = (targets != -100).sum().clamp_min(1)
    if logits_all:
        logits = torch.cat(logits_all, dim=1)
    else:  # an empty call
        logits = torch.zeros(B, 0, model.cfg.vocab_size, device=idx.device)  # type: ignore[union-attr]
    if pending is not None:
        state = NTPState(state.layers, state.position, pending)
    elif not keep_graph and state.position % L == 0:
        state = state.detach()
    return NTPOutput(logits, total / n, state)


# ---------------------------------------------------------------------------- helpers
def _settle(
    model: nn.Module, state: ModelState, pending: NTPPending, nxt: Tensor, first_order: bool
) -> ModelState:
    """Deposit the previous call's last term now that its target ``nxt: [B]`` is known."""
    if pending.position != state.position:
        raise ValueError(
            f"the state's pending next-token term is for position {pending.position}, but the "
            f"state is at {state.position}; continue a state only with the tokens that follow it"
        )
    lf = pending.logits if pending.logits.dtype == torch.float64 else pending.logits.float()
    loss = F.cross_entropy(lf, nxt, reduction="sum")
    grads = torch.autograd.grad(loss, pending.weights, create_graph=not first_order,
                                retain_graph=True, allow_unused=True)  # fmt: skip
    return _deposit(model, state, grads)


def _ntp_slots(model: nn.Module, state: Any) -> Iterator[tuple[int, int, CMSState]]:
    """``(block index, 0 = mixer / 1 = ffn, its CMSState)`` for each ``ntp`` CMS of the model."""
    for bi, block in enumerate(model.blocks):  # type: ignore[attr-defined]
        for slot, mod in enumerate((block.mixer, block.ffn)):
            st = state.layers[bi][slot]
            is_ntp = isinstance(mod, ContinuumMemory) and mod.cfg.objective == "ntp"
            if is_ntp and isinstance(st, CMSState):
                yield bi, slot, st


def _map_ntp(
    model: nn.Module, state: ModelState, fn: Callable[[ContinuumMemory, CMSState], CMSState]
) -> ModelState:
    layers = [list(pair) for pair in state.layers]
    for bi, slot, st in _ntp_slots(model, state):
        mod = model.blocks[bi].mixer if slot == 0 else model.blocks[bi].ffn  # type: ignore[attr-defined,index]
        layers[bi][slot] = fn(mod, st)
    return ModelState([tuple(pair) for pair in layers], state.position)  # type: ignore[misc]


def _fast_weights(model: nn.Module, state: ModelState) -> list[Tensor]:
    """The fast-weight tensors of every ``ntp`` level, blocks in order (``dW_in, dW_out``)."""
    return [t for *_, st in _ntp_slots(model, state) for ls in st.levels for t in ls.delta]


def _materialize(mod: ContinuumMemory, st: CMSState, B: int, device: torch.device) -> CMSState:
    """Give every level an explicit ``delta`` that autograd can differentiate against."""
    levels = []
    for level, ls in zip(mod.levels, st.levels):
        if ls.delta is None:
            w_in, w_out = level.weights()
            cdt = compute_dtype(w_in.dtype)
            z = (torch.zeros((B, *w_in.shape), device=device, dtype=cdt, requires_grad=True),
                 torch.zeros((B, *w_out.shape), device=device, dtype=cdt, requires_grad=True))  # fmt: skip
            ls = ls._replace(delta=z)
        elif not ls.delta[0].requires_grad:
            ls = ls._replace(delta=tuple(t.detach().requires_grad_() for t in ls.delta))
        levels.append(ls)
    return CMSState(tuple(levels))


def _deposit(model: nn.Module, state: ModelState, grads: tuple[Tensor | None, ...]) -> ModelState:
    """Add each level's gradient (``grads`` in the order of :func:`_fast_weights`) to its sum."""
    flat = iter(grads)
    count = sum(2 * len(st.levels) for *_, st in _ntp_slots(model, state))
    if count != len(grads):
        raise ValueError(f"{len(grads)} gradients for {count} fast-weight tensors")

    def fn(mod: ContinuumMemory, st: CMSState) -> CMSState:
        levels = []
        for ls in st.levels:
            g = (next(flat), next(flat))
            if g[0] is None and g[1] is None:
                levels.append(ls)
                continue
            g = tuple(torch.zeros_like(r) if t is None else t for t, r in zip(g, ls.delta))
            levels.append(ls._replace(grad=add(ls.grad, g)))
        return CMSState(tuple(levels))

    return _map_ntp(model, state, fn)
