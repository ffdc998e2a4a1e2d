"""Reference nested memory: a plain token loop derived from a :class:`MemorySpec`, the spec of ``chunk.py``.

Every inner gradient comes from ``torch.autograd.grad`` of the spec's objective at the gradient point
(the chunk's starting parameters), never from a hand derivation, so comparing the chunked form
against this loop also checks its algebra. For token ``t`` of a chunk that started from parameters
``P^g`` (NL eqs. 90-91, "gradients w.r.t. the last state of the previous chunk"):

    u_t   = grad_P  scale * l(M_P(k_t), target_t)  at P = P^g      target_t = v_t, or M_{P^g}(v_t)
    S_t   = m_t S_{t-1} - lr_t u_t                  (momentum; without it the step is -lr_t u_t)
    P_t   = a_t P_{t-1} + S_t                       (retention gate a_t; a_t = 1 without one)
    W0_t -= lr_t (W0^g k_t) k_t^T                   (algorithm='dgd', NL eqs. 57/88, input layer)
    y_t   = M_{P_t}(q_t)  read='after';  M_{P_{t-1}}(q_t) 'before';  M_{P^g}(q_t) 'chunk'

``lq`` / ``kl`` retention (MIRAS eqs. 24/27): the same linear step also runs on the accumulator
``A_t = a_t A_{t-1} + S_t``, and at each chunk end ``P = project(A)``; inside a chunk the weights take
the plain (unprojected) step, MIRAS §5's linearisation. ``muon`` (ATLAS): ``S_t = m_t S_{t-1} + u_t``
and at each chunk end ``P = (prod a) P - (sum_s lr_s prod_{j>s} a_j) NewtonSchulz(S)``.

At ``chunk_size=1`` this is the exact per-token recurrence of the spec (for ``lq``/``kl``/``muon``
with ``read='before'``/``'chunk'``, the exact MIRAS / ATLAS rules).

Inner math in float32 (float64 for float64 inputs); ``y`` is cast back to the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.ops.common import compute_dtype
from nestlearn.ops.nested.common import (
    NestedState,
    autograd_capable,
    check_nested_inputs,
    memory_forward,
    newton_schulz,
    objective_loss,
    project,
    zeros_state,
)
from nestlearn.ops.nested.spec import MemorySpec

__all__ = ["naive_nested", "prepare"]


def _bcast(g: Tensor, like: Tensor) -> Tensor:
    """``[G]`` gate -> broadcastable against a ``[G, ...]`` parameter."""
    return g.view(g.shape[0], *([1] * (like.dim() - 1)))


def prepare(
    spec: MemorySpec,
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    gates: list[Tensor | None],
    state: NestedState | None,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
) -> tuple[torch.dtype, list[Tensor | None], list[Tensor | None], NestedState, tuple]:
    """Cast to the compute dtype and merge ``(B, H)``: tokens ``[G, T, D]``, gates ``[G, T]``,
    state tensors ``[G, ...]``, LayerNorm affine ``[G, 1, Dv]``."""
    B, T, H, Dk = k.shape
    Dv = v.shape[-1]
    cdt = compute_dtype(k)
    if state is None:
        state = zeros_state(spec, B, H, Dk, Dv, dtype=cdt, device=k.device)
    st = state.to(cdt)
    if spec.momentum and st.momentum is None:
        st = st._replace(momentum=tuple(torch.zeros_like(p) for p in st.params))
    st = st._map(lambda t: t.reshape(B * H, *t.shape[2:]))
    toks = [
        None if x is None else x.to(cdt).transpose(1, 2).reshape(B * H, T, x.shape[-1])
        for x in (q, k, v)
    ]
    gs = [None if g is None else g.to(cdt).transpose(1, 2).reshape(B * H, T) for g in gates]

    def aff(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(cdt).unsqueeze(0).expand(B, H, Dv).reshape(B * H, 1, Dv)

    return cdt, toks, gs, st, (aff(norm_weight), aff(norm_bias))


def finish(st: NestedState, B: int, H: int) -> NestedState:
    """``[G, ...]`` state tensors back to ``[B, H, ...]``."""
    return st._map(lambda t: t.reshape(B, H, *t.shape[1:]))


@autograd_capable
def naive_nested(
    spec: MemorySpec,
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    retain: Tensor | None = None,
    momentum: Tensor | None = None,
    delta: Tensor | None = None,
    state: NestedState | None = None,
    *,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
) -> tuple[Tensor | None, NestedState]:
    """One memory level over a sequence, token by token (same signature as ``chunk_nested``).

    Args:
        spec: the level (:class:`MemorySpec`).
        q: ``[B, T, H, Dk]`` queries, or ``None`` to update without reading (``y`` is ``None``).
        k: ``[B, T, H, Dk]`` keys. v: ``[B, T, H, Dv]`` values.
        lr: ``[B, T, H]`` inner learning rate. retain: ``[B, T, H]`` retention gate ``a_t``
            (required by ``l2``, optional for ``lq``/``kl``). momentum: ``[B, T, H]`` momentum gate
            (``spec.momentum``). delta: ``[B, T, H]`` Huber radius (``objective='huber'``).
        state: :class:`NestedState`; ``None`` = zero parameters.
        norm_weight, norm_bias: ``[H, Dv]`` LayerNorm affine (``norm='layernorm'``), optional.

    Returns:
        ``(y [B, T, H, Dv] or None, final_state)``.
    """
    if spec.options:
        raise ValueError(
            f"spec.options {sorted(spec.options)} are for a dedicated op; the reference loop "
            "would ignore them: drop them or run nested_memory(..., backend='auto')"
        )
    check_nested_inputs(spec, q, k, v, lr, retain, momentum, delta, state, norm_weight, norm_bias)
    B, T, H, _ = k.shape
    cdt, (qs, ks, vs), (th, ar, mo, de), st, norm = prepare(
        spec, q, k, v, [lr, retain, momentum, delta], state, norm_weight, norm_bias
    )
    assert ks is not None and vs is not None and th is not None
    P, A, S = list(st.params), st.mirror, st.momentum
    anchor = list(st.anchor) if st.anchor is not None else P
    pending = st.pending
    off, C = st.offset, spec.chunk_size
    outer = torch.is_grad_enabled()
    ys = []
    for t in range(T):
        if off == 0:
            anchor = P
            if spec.algorithm == "muon":
                pending = (torch.ones_like(th[:, 0]), torch.zeros_like(th[:, 0]))
        kt, vt = ks[:, t : t + 1], vs[:, t : t + 1]
        with torch.enable_grad():
            # fresh graph nodes (views) to differentiate at: the target below uses ``anchor`` itself,
            # so the inner gradient does not flow through it, while the outer one still does
            a = [p.view_as(p) if p.requires_grad else p.detach().requires_grad_() for p in anchor]
            out, _, _ = memory_forward(spec, a, kt, norm)
            # a self-generated target is a constant of the inner gradient (NL eq. 83)
            tgt = vt if spec.target == "value" else memory_forward(spec, anchor, vt, norm)[0]
            loss = objective_loss(spec, out, tgt, None if de is None else de[:, t : t + 1]).sum()
            u = torch.autograd.grad(loss, a, create_graph=outer)
        lr_t = th[:, t]
        a_t = ar[:, t] if ar is not None else None
        qt = None if qs is None else qs[:, t : t + 1]
        if qt is not None and spec.read != "after":
            ys.append(memory_forward(spec, anchor if spec.read == "chunk" else P, qt, norm)[0])
        if spec.algorithm == "muon":
            assert S is not None and mo is not None and pending is not None
            S = tuple(_bcast(mo[:, t], s) * s + ui for s, ui in zip(S, u))
            dec, step = pending
            pending = (
                dec if a_t is None else a_t * dec,
                (step if a_t is None else a_t * step) + lr_t,
            )
        else:
            steps = [-_bcast(lr_t, ui) * ui for ui in u]
            if S is not None:
                assert mo is not None
                S = tuple(_bcast(mo[:, t], s) * s + d for s, d in zip(S, steps))
                steps = list(S)
            P = [p + d if a_t is None else _bcast(a_t, p) * p + d for p, d in zip(P, steps)]
            if spec.algorithm == "dgd":  # NL eq. 88: W (a I - lr k k^T), k k^T at the grad point
                pk = kt @ anchor[0].mT  # [G, 1, o]
                P[0] = P[0] - _bcast(lr_t, P[0]) * (pk.mT @ kt)
            if A is not None:
                A = tuple(
                    x + d if a_t is None else _bcast(a_t, x) * x + d for x, d in zip(A, steps)
                )
        off += 1
        if off == C:
            off = 0
            if A is not None:
                P = list(project(spec, A, batch_dims=1))
            if spec.algorithm == "muon":
                assert S is not None and pending is not None
                dec, step = pending
                P = [_bcast(dec, p) * p - _bcast(step, p) * newton_schulz(s, spec.ns_steps)
                     for p, s in zip(P, S)]  # fmt: skip
                pending = None
        if qt is not None and spec.read == "after":
            ys.append(memory_forward(spec, P, qt, norm)[0])
    final = NestedState(
        tuple(P), A, S, tuple(anchor) if off > 0 else None, off, pending if off > 0 else None
    )
    final = finish(final, B, H)
    if q is None:
        return None, final
    y = torch.cat(ys, dim=1).reshape(B, H, T, -1).transpose(1, 2)
    return y.to(q.dtype), final
