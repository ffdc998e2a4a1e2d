"""Chunk-parallel self-modifying Titans (Nested Learning eqs. 83-93): the hot path of Hope.

The projection memories do not depend on the main memory, so the op runs in two passes:

1. **Projection pass** (a Python loop over ``proj_chunk_size`` chunks, the only sequential part):
   per chunk, one batched MLP forward of all ``n`` projection memories at the chunk's starting
   weights gives every token's ``k, v, q, eta, alpha`` (eqs. 84-85, 90); one update-only
   ``chunk_titans`` call (self-generated targets ``M_box(v)``, eq. 83) advances all of them at once.
2. **Main memory pass**: a single ``chunk_titans`` call over the whole sequence with
   ``chunk_size`` chunks, self-generated targets ``M_memory(v)``, reads before writes (eq. 86).

Same contract as :func:`nestlearn.ops.selfmod.naive.naive_selfmod_titans` (a per-token loop).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.ops import compiled
from nestlearn.ops.common import compute_dtype
from nestlearn.ops.compiled import chunk_step
from nestlearn.ops.recompute import (
    check_recompute_group,
    grad_flows,
    recompute_active,
    run_grouped,
)
from nestlearn.ops.selfmod.common import (
    Projections,
    SelfModState,
    check_selfmod_inputs,
    gradient_point,
    prepare_state,
    project,
)
from nestlearn.ops.titans import chunk_titans
from nestlearn.ops.titans.common import Activation, Optimizer, TitansState, steady_titans_state

__all__ = ["chunk_selfmod_titans"]


def chunk_selfmod_titans(
    x: Tensor,
    state: SelfModState,
    *,
    names: tuple[str, ...],
    eta_readout: tuple[Tensor, Tensor],
    alpha_readout: tuple[Tensor, Tensor] | None = None,
    q: Tensor | None = None,
    k: Tensor | None = None,
    v: Tensor | None = None,
    momentum: Tensor | None = None,
    chunk_size: int = 64,
    proj_chunk_size: int = 16,
    max_lr: float = 0.01,
    activation: Activation = "silu",
    optimizer: Optimizer = "dgd",
    exact_output: bool = False,
    hidden_chunk: bool = False,
    hidden_prior: tuple[tuple[Tensor, ...], tuple[Tensor, ...]] | None = None,
    proj_lr_scale: float = 1.0,
    recompute_group: int | None = None,
) -> tuple[Tensor, SelfModState]:
    """Self-modifying Titans over a sequence, chunk-parallel.

    Args:
        x: ``[B, T, H, F]`` memory inputs (after the block's projection and short conv).
        state: :class:`SelfModState` (``proj``: ``[B, n H, o, i]`` per layer; ``memory``:
            ``[B, H, o, i]``), e.g. the meta-learned initial memories expanded over the batch.
        names: adaptive projections, a subset of ``("k", "v", "q", "eta", "alpha")`` in that
            order; ``"eta"`` is required, ``"alpha"`` iff weight decay is on.
        eta_readout, alpha_readout: ``(r [H, F], b [H])`` per-head readouts of the scalar
            memories (``alpha_readout=None``: no weight decay, retention 1).
        q, k, v: fixed projections ``[B, T, H, F]`` for the ones not in ``names``.
        momentum: ``[B, T, H]`` momentum gate in ``[0, 1]`` or ``None`` (no momentum).
        chunk_size: chunk of the main memory ``M_memory``.
        proj_chunk_size: chunk of the projection memories.
        max_lr: bound of the inner learning rate ``eta_t``.
        activation: the memories' nonlinearity ``s``.
        optimizer: ``"dgd"`` (Delta GD, eq. 88) or ``"gd"`` (Table 6 "w/o DGD").
        exact_output, hidden_chunk: the strong-write rule of every memory (``chunk_titans``).
        hidden_prior: ``(proj weights, memory weights)`` the hidden layers retain toward (the
            meta-learned initial memories), or ``None`` (toward zero); needs ``hidden_chunk``.
        proj_lr_scale: the projection memories learn at ``proj_lr_scale * eta_t`` (the main
            memory at ``eta_t``).
        recompute_group: chunk-group recompute (``nestlearn.ops.recompute``): while a gradient
            is recorded, both passes run in checkpointed groups of this many chunks (of their own
            chunk size) and keep one state snapshot per group for backward; ``None`` or ``0``
            keeps every chunk's tensors. Same numbers either way.

    Returns:
        ``(o [B, T, H, F], final_state)``; ``o_t = M_{memory, t-1}(q_t)`` in ``x.dtype``. Threading
        ``final_state`` into the next call equals one call over the concatenated tokens.
    """
    check_selfmod_inputs(
        x, names, q, k, v, momentum, alpha_readout, state, chunk_size, proj_chunk_size
    )
    group = check_recompute_group(recompute_group)
    if not recompute_active(
        group, x, state, q, k, v, momentum, eta_readout, alpha_readout, hidden_prior
    ):
        group = 0
    B, T = x.shape[:2]
    H, Fd = x.shape[-2:]
    cdt = compute_dtype(x)
    st = prepare_state(state, momentum is not None, cdt)
    xs, qs, ks, vs = (None if t is None else t.to(cdt) for t in (x, q, k, v))
    assert xs is not None
    mom = None if momentum is None else momentum.to(cdt)
    if compiled.stepping():  # one compiled graph for the first projection chunk and the rest
        grad = grad_flows(xs, qs, ks, vs, mom, eta_readout, alpha_readout, st.proj)
        st = st._replace(proj=steady_titans_state(st.proj, grad))

    # 1. projection pass over proj_chunk_size chunks (aligned to the state's offset)
    proj = st.proj
    # chunk boundaries (the first one aligned to the state's offset); the inputs are cut with
    # ``split``, whose backward is one concatenation: slicing every chunk out of the full
    # tensors made each slice's backward a zero-filled full-length tensor, O(T^2) traffic
    # (hope at T = 4096 ran at half its T = 512 tokens/s)
    sizes, t0 = [], 0
    while t0 < T:
        c = min(proj_chunk_size - (proj.offset if t0 == 0 else 0), T - t0)
        sizes.append(c)
        t0 += c

    def cut(t: Tensor | None) -> list[Tensor | None]:
        return [None] * len(sizes) if t is None else list(t.split(sizes, dim=1))

    pieces = list(zip(cut(xs), cut(qs), cut(ks), cut(vs), cut(mom)))

    opts = dict(
        names=names, eta_readout=eta_readout, alpha_readout=alpha_readout, max_lr=max_lr,
        activation=activation, optimizer=optimizer, proj_chunk_size=proj_chunk_size,
        exact_output=exact_output, hidden_chunk=hidden_chunk, proj_lr_scale=proj_lr_scale,
        prior=None if hidden_prior is None else hidden_prior[0],
    )  # fmt: skip
    step = chunk_step(_proj_step)

    def chunk_range(i0: int, i1: int, proj: TitansState) -> tuple[list, TitansState]:
        outs = []
        for xc, qc, kc, vc, m in pieces[i0:i1]:
            # a whole aligned chunk runs the (optionally compiled) step; a chunk cut by the
            # state's offset or the end of the input is a one-off shape and runs eagerly
            full = proj.offset == 0 and xc.shape[1] == proj_chunk_size
            p, proj = (step if full else _proj_step)(proj, xc, qc, kc, vc, m, **opts)
            outs.append(p)
        return outs, proj

    groups, proj = run_grouped(len(pieces), group, chunk_range, proj)
    outs = [p for g in groups for p in g]
    if len(outs) == 1:
        P = outs[0]
    else:
        P = type(outs[0])(
            *(None if f[0] is None else torch.cat(f, dim=1) for f in zip(*outs))  # type: ignore[arg-type]
        )
    # 2. main memory: one call, self-generated targets, reads before writes (eq. 86)
    o, memory = chunk_titans(
        P.q, P.k, P.v, P.eta, mom, P.alpha, st.memory,
        chunk_size=chunk_size, activation=activation, optimizer=optimizer, read="before",
        self_target=True, exact_output=exact_output, hidden_chunk=hidden_chunk,
        hidden_prior=None if hidden_prior is None else hidden_prior[1], recompute_group=group,
    )  # fmt: skip
    assert o is not None
    return o.to(x.dtype), SelfModState(proj, memory)


def _proj_step(
    proj: TitansState,
    xc: Tensor,
    qc: Tensor | None,
    kc: Tensor | None,
    vc: Tensor | None,
    m: Tensor | None,
    *,
    names: tuple[str, ...],
    eta_readout: tuple[Tensor, Tensor],
    alpha_readout: tuple[Tensor, Tensor] | None,
    max_lr: float,
    activation: Activation,
    optimizer: Optimizer,
    proj_chunk_size: int,
    exact_output: bool,
    hidden_chunk: bool,
    proj_lr_scale: float,
    prior: tuple[Tensor, ...] | None,
) -> tuple[Projections, TitansState]:
    """One projection-memory chunk: read every token's ``k, v, q, eta, alpha`` at the chunk's
    gradient point (eqs. 84-85, 90), then advance all ``n`` memories with one update-only
    ``chunk_titans`` call (self-generated targets, eq. 83). A pure function of its tensors."""
    n = len(names)

    def rep(t: Tensor | None) -> Tensor | None:
        # [B, c, H, ...] -> [B, c, n H, ...]: every projection memory sees the same k, gates
        return None if t is None else t.repeat(1, 1, n, *([1] * (t.dim() - 3)))

    p = project(
        gradient_point(proj), xc, names, q=qc, k=kc, v=vc, eta_readout=eta_readout,
        alpha_readout=alpha_readout, max_lr=max_lr, activation=activation,
    )  # fmt: skip
    _, proj = chunk_titans(
        None, rep(p.k), rep(p.v), rep(p.eta * proj_lr_scale), rep(m), rep(p.alpha), proj,  # type: ignore[arg-type]
        chunk_size=proj_chunk_size, activation=activation, optimizer=optimizer,
        self_target=True, exact_output=exact_output, hidden_chunk=hidden_chunk,
        hidden_prior=prior,
    )  # fmt: skip
    return p, proj
