"""Chunk-parallel update of one Continuum Memory System level: the fast path.

Inner math in float32 (float64 when the input is float64) with autocast off; the output is cast
back to the input dtype and the returned state stays in the compute dtype.

Contract (same as ``naive.naive_cms_level``; derivation in ``README.md``). Tokens are grouped into
chunks of ``period`` tokens aligned to absolute positions (``initial_state.position``). Every token
of chunk ``c`` is read with that chunk's weights ``W_c = W_0 + Delta_c`` and, with the local
``"next"`` objective, contributes the gradient of ``1/2 ||MLP_{W_c}(x_t) - x_{t+1}||^2`` at
``W_c``. At each boundary ``i = 0 (mod period)`` (NL eq. 71)::

    Delta_{c+1} = (1 - retention) * Delta_c - lr * sum_{t in chunk c} grad_t

(``retention = 0``, the default, is eq. 71 as written; ``retention > 0`` pulls the fast weights
back toward the meta-learned ``W_0`` at every boundary, so a long stream cannot drift them
without bound) and, for a nested level (eq. 72), every ``reset_period`` tokens::

    A <- A - reset_lr * (sum of the level's gradients since its last reset);   Delta <- A

With the ``"external"`` objective the op computes no gradient itself: a driver deposits the
gradient of the true next-token loss into ``state.grad`` (``nestlearn.models.ntp.ntp_forward``).

Equivalence: equal to ``naive_cms_level`` (a per-token loop that takes the gradients with
autograd) up to rounding, at any chunk size, for any split of the tokens into calls. Because the
gradient of a chunk is taken at its starting weights, one chunk is a handful of batched matmuls
(``level_forward`` + ``level_grads``); the Python loop runs over chunks only, with no host sync.

Axis legend: B batch, T tokens, C tokens of a chunk, D width, H hidden, Hin = 2H or H.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.ops import compiled
from nestlearn.ops.cms.common import (
    Activation,
    CMSLevelState,
    Objective,
    Pair,
    Term,
    add,
    check_inputs,
    check_retention,
    level_forward,
    level_grads,
    scale,
    scaled_sub,
)
from nestlearn.ops.common import compute_dtype
from nestlearn.ops.compiled import chunk_step
from nestlearn.ops.recompute import (
    check_recompute_group,
    grad_flows,
    recompute_active,
    run_grouped,
)

__all__ = ["chunk_cms_level", "fold_pending"]


def chunk_cms_level(
    x: Tensor,
    w_in: Tensor,
    w_out: Tensor,
    lr: Tensor | float,
    initial_state: CMSLevelState | None = None,
    *,
    period: int,
    activation: Activation = "swiglu",
    objective: Objective = "next",
    reset_period: int | None = None,
    reset_lr: Tensor | float | None = None,
    first_order: bool = False,
    update: bool = True,
    output_final_state: bool = False,
    retention: float = 0.0,
    recompute_group: int | None = None,
) -> tuple[Tensor, CMSLevelState | None]:
    """Read and update one CMS level over ``T`` tokens, chunk-parallel.

    Args:
        x: ``[B, T, D]`` level input (the keys; with ``"next"`` also the values, shifted by one).
        w_in: ``[Hin, D]`` meta-learned input weights (``[W_gate; W_up]`` for ``"swiglu"``).
        w_out: ``[D, H]`` meta-learned output weights.
        lr: the level's inner learning rate ``eta`` (0-dim tensor or float; eq. 71).
        initial_state: :class:`CMSLevelState` from an earlier call, or ``None`` (fresh sequence).
        period: chunk size ``C`` of the level: its weights change every ``C`` tokens.
        activation: ``"swiglu"``, ``"gelu"``, ``"silu"`` or ``"relu"``.
        objective: ``"next"`` (local next-input regression) or ``"external"`` (gradients supplied
            by a driver in ``state.grad``).
        reset_period: nested variant: re-initialise the level every ``reset_period`` tokens (a
            multiple of ``period``) to its per-sequence anchor.
        reset_lr: nested variant: learning rate of the anchor's update (the slower level's).
        first_order: take the inner gradients as constants (no backprop through them).
        update: ``False`` freezes the level (reads only; position still advances).
        output_final_state: return the state (else ``None`` and the last, never-applied chunk's
            gradient is skipped).
        retention: fraction of the fast-weight offset ``Delta`` removed at every chunk boundary,
            before the chunk's step, in ``[0, 1)`` (not with ``reset_period``).
        recompute_group: chunk-group recompute (``nestlearn.ops.recompute``): while a gradient
            is recorded, the chunk loop runs in checkpointed groups of this many chunks and keeps
            one fast-weight snapshot per group for backward; ``None`` or ``0`` keeps every
            chunk's tensors. Same numbers either way.

    Returns:
        ``(y [B, T, D] in x.dtype, final_state or None)``.

    Example::

        >>> B, T, D, H = 2, 100, 16, 32
        >>> x = torch.randn(B, T, D)
        >>> w_in, w_out = torch.randn(2 * H, D) * 0.1, torch.randn(D, H) * 0.1
        >>> y, st = chunk_cms_level(x, w_in, w_out, 0.01, period=16, output_final_state=True)
        >>> y.shape, st.delta[0].shape, st.position
        (torch.Size([2, 100, 16]), torch.Size([2, 64, 16]), 100)
    """
    check_inputs(x, w_in, w_out, period, activation, objective, reset_period, initial_state)
    check_retention(retention, reset_period)
    group = check_recompute_group(recompute_group)
    if not recompute_active(group, x, w_in, w_out, lr, reset_lr, initial_state):
        group = 0
    cdt = compute_dtype(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        y, st = _run(
            x.to(cdt),
            w_in.to(cdt),
            w_out.to(cdt),
            torch.as_tensor(lr, dtype=cdt, device=x.device),
            None if reset_lr is None else torch.as_tensor(reset_lr, dtype=cdt, device=x.device),
            (initial_state or CMSLevelState()).to(cdt),
            period,
            reset_period,
            activation,
            objective == "next" and update,
            first_order,
            update,
            output_final_state,
            1.0 - float(retention),
            group,
        )
    return y.to(x.dtype), st


def _run(
    x: Tensor,
    w_in: Tensor,
    w_out: Tensor,
    lr: Tensor,
    reset_lr: Tensor | None,
    st: CMSLevelState,
    C: int,
    R: int | None,
    act: str,
    local: bool,
    first_order: bool,
    update: bool,
    keep_state: bool,
    keep: float,
    group: int = 0,
) -> tuple[Tensor, CMSLevelState | None]:
    B, T, _ = x.shape
    pos = st.position
    neg_lr = -lr

    # Delta = base - lr * S: S sums the gradients applied since ``base`` was set, so the learning
    # rate multiplies activation-sized products (see level_forward) and, first-order, nothing
    # weight-sized enters the backward pass.
    def terms(base: Pair | None, S: Pair | None) -> list[Term]:
        return ([] if base is None else [(None, base)]) + ([] if S is None else [(neg_lr, S)])

    def grads(xk: Tensor, v: Tensor, b: Tensor, h: Tensor, a: Tensor, tm: list[Term]) -> Pair:
        if first_order:  # inner gradients as constants: the outer loss sees W_c = W_0 + const
            with torch.no_grad():
                tm = [
                    (None if c is None else c.detach(), (p[0].detach(), p[1].detach()))
                    for c, p in tm
                ]
                ts = (t.detach() for t in (xk, v, b, h, a, w_out))
                return level_grads(*ts, tm, act)
        return level_grads(xk, v, b, h, a, w_out, tm, act)

    def grads_of(
        keys: Tensor,
        targets: Tensor,
        tm: list[Term],
        fwd: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> Pair:
        """Summed terms of the pairs (keys[j], targets[j]) at the weights ``tm``."""
        b, h, a = fwd if fwd is not None else level_forward(keys, w_in, w_out, tm, act)
        return grads(keys, targets, b, h, a, tm)

    grad, anchor, agrad, base = st.grad, st.anchor, st.anchor_grad, st.delta
    # ``buf`` holds the inputs of the current chunk's tokens whose terms are not accumulated yet
    # (at least the last one: its target is the next input). Deferring them is exact, since
    # every term of a chunk is taken at the chunk's weights, and it keeps decoding cheap: the
    # terms are computed once per chunk as one batched matmul.
    buf = st.pending if local else None
    if not update and st.pending is not None and st.pending.shape[1] > 1:  # freezing: keep the
        grad = add(grad, grads_of(st.pending[:, :-1], st.pending[:, 1:], terms(base, None)))
    if buf is not None and T > 0 and pos % C == 0:  # the previous chunk ended at the call edge
        grad = add(grad, grads_of(buf, torch.cat([buf[:, 1:], x[:, :1]], dim=1), terms(base, None)))
        buf = None
    max_buf = max(1, (w_in.numel() + w_out.numel()) // x.shape[-1])  # never larger than a grad

    # segments of this call, split at absolute multiples of C (each lies inside one chunk)
    bounds, s = [], 0
    while s < T:
        e = min(T, s + C - (pos + s) % C)
        bounds.append((s, e))
        s = e
    sizes = [e - s for s, e in bounds]
    # views by split, not slicing: their backward is one concatenation, not a zero-filled
    # full-size tensor per chunk
    xs_all = x.split(sizes, dim=1) if bounds else ()
    tg_all = x[:, 1:].split(sizes[:-1] + [sizes[-1] - 1], dim=1) if bounds else ()  # x_{t+1}
    # x W_0^T for every token at once: one large matmul instead of one per chunk
    h0_all = F.linear(x, w_in).split(sizes, dim=1) if T > C else (None,) * len(bounds)

    Carry = tuple[Any, ...]  # (base, S, grad, anchor, agrad, buf)
    full_step = chunk_step(cms_chunk_step)
    # compiled steps: an empty S is a zero pair rather than None, so the first chunk (and the
    # first after an eq. 72 restart) replays the later chunks' graph; dropped again at the end
    S0: Pair | None = None
    if local and compiled.stepping():
        rg = not first_order and grad_flows(x, w_in, w_out, lr)
        S0 = (
            compiled.steady(x.new_zeros(B, *w_in.shape), rg),
            compiled.steady(x.new_zeros(B, *w_out.shape), rg),
        )

    def boundary(i: int, c: Carry) -> Carry:
        """Eq. 71 at the start of segment ``i``: apply the finished chunk's sum (and eq. 72)."""
        base, S, grad, anchor, agrad, buf = c
        p = pos + bounds[i][0]
        if update and p % C == 0 and p > 0:
            if local:  # (1 - r) (base - lr S) - lr g = (1 - r) base - lr ((1 - r) S + g)
                base, S = scale(base, keep), add(scale(S, keep), grad)
            else:  # a driver differentiates against ``state.delta``: it must be the weights used
                base = scaled_sub(scale(base, keep), lr, grad)
            if R is not None:  # eq. 72: the nested level restarts from its anchor
                agrad = add(agrad, grad)
                if p % R == 0:
                    anchor = scaled_sub(anchor, reset_lr if reset_lr is not None else lr, agrad)
                    agrad, base, S = None, anchor, S0
            grad = None
        return base, S, grad, anchor, agrad, buf

    def seg_range(i0: int, i1: int, c: Carry) -> tuple[list[Tensor], Carry]:
        ys = []
        for i in range(i0, i1):
            if i == 0 or i > i0:  # a later range's first boundary ran at the end of the last
                c = boundary(i, c)
            base, S, grad, anchor, agrad, buf = c
            e = bounds[i][1]
            xs, tm = xs_all[i], terms(base, S)
            if local and e < T and xs.shape[1] == C and buf is None:
                # a whole chunk inside the call: read and sum its terms in one (optionally
                # compiled) step
                y, g = full_step(xs, tg_all[i], w_in, w_out, base, S, neg_lr, h0_all[i],
                                 act=act, first_order=first_order)  # fmt: skip
                ys.append(y)
                grad = add(grad, g)
                c = (base, S, grad, anchor, agrad, buf)
                continue
            fwd = level_forward(xs, w_in, w_out, tm, act, h0_all[i])
            ys.append(fwd[0])
            if local and e < T:  # the chunk ends inside the call: all its terms now
                grad = add(grad, grads_of(xs, tg_all[i], tm, fwd))
                if buf is not None:
                    grad = add(grad, grads_of(buf, torch.cat([buf[:, 1:], xs[:, :1]], dim=1), tm))
                    buf = None
            elif local and keep_state:  # the call ends inside this chunk: defer its terms
                keys = xs if buf is None else torch.cat([buf, xs], dim=1)
                if keys.shape[1] > max_buf:  # very long chunks: flush all but the last key
                    grad = add(grad, grads_of(keys[:, :-1], keys[:, 1:], tm))
                    keys = keys[:, -1:]
                buf = keys
            c = (base, S, grad, anchor, agrad, buf)
        if i1 < len(bounds):
            # the next range starts with a boundary: apply it here, so the snapshot the next
            # range keeps for backward holds S alone, not S and the finished chunk's sum
            c = boundary(i1, c)
        return ys, c

    groups, (base, S, grad, anchor, agrad, buf) = run_grouped(
        len(bounds), group, seg_range, (base, S0, grad, anchor, agrad, buf)
    )
    if S0 is not None and S is S0:
        S = None
    ys = [y for g in groups for y in g]
    y = torch.cat(ys, dim=1) if ys else x.new_zeros(B, 0, w_out.shape[0])
    if not keep_state:
        return y, None
    delta = scaled_sub(base, lr, S)
    return y, CMSLevelState(delta, grad, buf, anchor, agrad, pos + T)


def cms_chunk_step(
    xs: Tensor,
    tg: Tensor,
    w_in: Tensor,
    w_out: Tensor,
    base: Pair | None,
    S: Pair | None,
    neg_lr: Tensor,
    h0: Tensor | None,
    *,
    act: str,
    first_order: bool,
) -> tuple[Tensor, Pair]:
    """One whole chunk of a level: its outputs at ``W_c = W_0 + base - lr S`` and the sum of its
    ``"next"`` terms (pairs ``(x_t, x_{t+1})``) at the same weights. A pure tensor function, so
    :mod:`nestlearn.ops.compiled` can compile it once for every chunk."""
    tm: list[Term] = ([] if base is None else [(None, base)]) + (
        [] if S is None else [(neg_lr, S)]
    )
    b, h, a = level_forward(xs, w_in, w_out, tm, act, h0)
    if first_order:  # inner gradients as constants: the outer loss sees W_c = W_0 + const
        with torch.no_grad():
            tmd = [
                (None if c is None else c.detach(), (p[0].detach(), p[1].detach())) for c, p in tm
            ]
            ts = (t.detach() for t in (xs, tg, b, h, a, w_out))
            return b, level_grads(*ts, tmd, act)
    return b, level_grads(xs, tg, b, h, a, w_out, tm, act)


def fold_pending(
    state: CMSLevelState,
    w_in: Tensor,
    w_out: Tensor,
    *,
    activation: Activation = "swiglu",
    first_order: bool = False,
) -> CMSLevelState:
    """The same state with every deferred term accumulated into ``grad`` (only the last input,
    whose target is still unknown, stays pending): a canonical form for comparing states."""
    if state.pending is None or state.pending.shape[1] < 2:
        return state
    keys = state.pending
    tm: list[Term] = [] if state.delta is None else [(None, state.delta)]
    with torch.no_grad() if first_order else contextlib.nullcontext():
        b, h, a = level_forward(keys[:, :-1], w_in, w_out, tm, activation)
        g = level_grads(keys[:, :-1], keys[:, 1:], b, h, a, w_out, tm, activation)
    return state._replace(grad=add(state.grad, g), pending=keys[:, -1:])
