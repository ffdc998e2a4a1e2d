"""Generic chunk-parallel nested memory: any :class:`MemorySpec`, gradients at the chunk start.

The fast path for specs that no dedicated op covers (``dispatch.py`` sends the rest to
``chunk_titans``, ``chunk_delta_rule`` and ``chunk_ttt``). Same contract as
:func:`nestlearn.ops.nested.naive.naive_nested`, equal to it up to rounding, forward and backward
(derivation in ``README.md``):

1. **Inner gradients, batched and by autograd.** One forward of the chunk's keys through the memory at
   the gradient point ``P^g`` and one ``autograd.grad`` of the summed objective with respect to
   every layer's pre-activation ``h_l`` give each token's error ``delta_{l,s}``: token ``s``'s loss
   only touches row ``s``, so ``d sum / d h_l[s]`` is that token's own ``delta``. Each per-token
   parameter gradient is then rank one, ``u_{W_l,s} = delta_{l,s} z_{l,s}^T`` (a bias: ``delta``;
   a vector memory: ``delta * z``). ``create_graph`` keeps them differentiable for the outer loss.
2. **Coefficients.** Retention and momentum are linear scans, so inside a chunk
   ``P_t = beta_t P + gamma_t S - sum_{s<=t} c_ts u_s`` with ``c = D^a D^m diag(lr)`` (NL eqs. 90-91,
   Titans §3.2), built from ``ops/scan`` decay matrices.
3. **Reads, dual form.** ``(P_t)_l r_t = beta_t W_l r_t + gamma_t S_l r_t - sum_s c_ts (z_s . r_t)
   delta_s``: one ``[C, C]`` matmul per layer, no per-token weights.
4. **Chunk end.** The last coefficient row applies every write at once; ``lq`` / ``kl`` project the
   accumulator; ``muon`` orthogonalises the momentum.

Only a Python loop over chunks remains. Inner math in float32 (float64 for float64 inputs).

Axis legend: G = B * H, n tokens in the current chunk (<= C), o / i a layer's output / input dims.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.ops.common import shift_right
from nestlearn.ops.nested.common import (
    NestedState,
    activation_fn,
    autograd_capable,
    check_nested_inputs,
    layer_norm,
    memory_forward,
    newton_schulz,
    objective_loss,
    project,
)
from nestlearn.ops.nested.naive import _bcast, finish, prepare
from nestlearn.ops.nested.spec import MemorySpec
from nestlearn.ops.scan import decay_matrix, exp_flush, log_gate

__all__ = ["chunk_nested"]


@autograd_capable
def chunk_nested(
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
    """One memory level over a sequence, chunk-parallel (arguments as :func:`naive_nested`).

    Returns:
        ``(y [B, T, H, Dv] or None, final_state)``; threading ``final_state`` into the next call
        (split anywhere, mid-chunk included) equals one call over the concatenation.
    """
    if spec.options:
        raise ValueError(
            f"spec.options {sorted(spec.options)} are for a dedicated op; the generic path would "
            "ignore them: drop them or use a spec that a dedicated op runs (backend='auto')"
        )
    check_nested_inputs(spec, q, k, v, lr, retain, momentum, delta, state, norm_weight, norm_bias)
    B, T, H, _ = k.shape
    _, (qs, ks, vs), gates, st, norm = prepare(
        spec, q, k, v, [lr, retain, momentum, delta], state, norm_weight, norm_bias
    )
    assert ks is not None and vs is not None
    P, A, S = tuple(st.params), st.mirror, st.momentum
    anchor = st.anchor
    off, C, pending = st.offset, spec.chunk_size, st.pending
    outer = torch.is_grad_enabled()
    ys = []
    t0 = 0
    while t0 < T:
        n = min(C - off, T - t0)
        if off == 0:
            anchor = P
            if spec.algorithm == "muon":
                pending = (torch.ones_like(ks[:, 0, 0]), torch.zeros_like(ks[:, 0, 0]))
        assert anchor is not None

        def seg(x: Tensor | None, a: int = t0, b: int = t0 + n) -> Tensor | None:
            return None if x is None else x[:, a:b]

        completes = off + n == C
        y, P, A, S, pending = _chunk(
            spec, seg(qs), seg(ks), seg(vs), [seg(g) for g in gates], P, anchor, A, S,
            pending, norm, completes, outer,
        )  # fmt: skip
        if y is not None:
            ys.append(y)
        off = 0 if completes else off + n
        t0 += n
    final = NestedState(P, A, S, anchor if off > 0 else None, off, pending if off > 0 else None)
    final = finish(final, B, H)
    if q is None:
        return None, final
    out = torch.cat(ys, dim=1) if len(ys) > 1 else ys[0]
    return out.reshape(B, H, T, -1).transpose(1, 2).to(q.dtype), final


def _coefs(
    spec: MemorySpec, th: Tensor, ar: Tensor | None, mo: Tensor | None
) -> dict[str, Tensor | None]:
    """Weight-independent coefficients of one chunk (``[G, n(, n)]``; README "coefficients")."""
    la = log_gate(ar) if ar is not None else torch.zeros_like(th)
    DM = decay_matrix(la)  # DM[t, r] = prod_{r<j<=t} a_j
    beta = exp_flush(la.cumsum(-1))
    out: dict[str, Tensor | None] = {"beta": beta, "gamma": None, "DM": DM}
    if mo is not None:
        le = log_gate(mo)
        DS = decay_matrix(le)  # DS[r, s] = prod_{s<j<=r} m_j
        Hc = exp_flush(le.cumsum(-1))
        out["DS"], out["H"] = DS, Hc
        if spec.algorithm != "muon":
            out["cS"] = DM @ (DS * th.unsqueeze(-2))
            out["gamma"] = (DM @ Hc.unsqueeze(-1)).squeeze(-1)
    if "cS" not in out:
        out["cS"] = DM * th.unsqueeze(-2)
    out["cM"] = DM * th.unsqueeze(-2) if spec.algorithm == "dgd" else None
    return out


def _shift(x: Tensor | None, fill: float, matrix: bool) -> Tensor | None:
    """Row ``t`` -> row ``t - 1`` (row 0 = ``fill``): coefficients of ``P_{t-1}`` (read before)."""
    if x is None:
        return None
    return shift_right(x, -2 if matrix else -1, fill)


def _chunk(
    spec: MemorySpec,
    Q: Tensor | None,
    K: Tensor,
    V: Tensor,
    gates: list[Tensor | None],
    P: tuple[Tensor, ...],
    Pg: tuple[Tensor, ...],
    A: tuple[Tensor, ...] | None,
    S: tuple[Tensor, ...] | None,
    pending: tuple[Tensor, Tensor] | None,
    norm: tuple,
    completes: bool,
    outer: bool,
) -> tuple[Tensor | None, tuple[Tensor, ...], tuple | None, tuple | None, tuple | None]:
    """One (possibly partial) chunk: reads and the state after its last token."""
    th, ar, mo, de = gates
    assert th is not None
    L = spec.n_layers
    vector = spec.memory == "vector"
    # 1. every token's error at every layer, by autograd of the objective at the gradient point
    with torch.enable_grad():
        out, zs, hs = memory_forward(spec, Pg, K, norm, collect=True, leaves=True)
        tgt = V if spec.target == "value" else memory_forward(spec, Pg, V, norm)[0]
        loss = objective_loss(spec, out, tgt, de).sum()
        deltas = torch.autograd.grad(loss, hs, create_graph=outer)
    co = _coefs(spec, th, ar, mo)

    def usum(j: int, c: Tensor) -> Tensor:
        """``sum_s c[:, s] u_{j, s}`` for parameter ``j`` (rank-one gradients)."""
        li, is_bias = j % L, j >= L
        D = deltas[li] * c.unsqueeze(-1)  # [G, n, o]
        if is_bias:
            return D.sum(1)
        if vector:
            return (D * zs[li]).sum(1)
        return D.mT @ zs[li]

    # 2. reads
    Y = None
    if Q is not None:
        Y = _reads(spec, Q, K, P, Pg, S, co, zs, hs, deltas, norm)
    # 3. the state after the segment's last token
    beta_e = co["beta"][:, -1]  # type: ignore[index]
    if spec.algorithm == "muon":
        assert S is not None and pending is not None and co.get("DS") is not None
        ws = co["DS"][:, -1]  # type: ignore[index]
        S = tuple(_bcast(co["H"][:, -1], s) * s + usum(j, ws) for j, s in enumerate(S))  # type: ignore[index]
        step = (co["DM"][:, -1] * th).sum(-1)  # type: ignore[index]
        dec, acc = pending
        pending = (beta_e * dec, beta_e * acc + step)
        if completes:
            dec, acc = pending
            P = tuple(_bcast(dec, p) * p - _bcast(acc, p) * newton_schulz(s, spec.ns_steps)
                      for p, s in zip(P, S))  # fmt: skip
            pending = None
        return Y, P, A, S, pending
    cS_e = co["cS"][:, -1]  # type: ignore[index]
    gamma_e = None if co["gamma"] is None else co["gamma"][:, -1]
    upd = [usum(j, cS_e) for j in range(len(P))]

    def advance(base: tuple[Tensor, ...]) -> list[Tensor]:
        new = []
        for j, x in enumerate(base):
            y = _bcast(beta_e, x) * x - upd[j]
            if gamma_e is not None:
                assert S is not None
                y = y + _bcast(gamma_e, x) * S[j]
            new.append(y)
        return new

    newP = advance(P)
    if co["cM"] is not None:  # DGD: -sum_s lr_s prod a (W^g k_s) k_s^T on the input layer
        cM_e = co["cM"][:, -1]
        newP[0] = newP[0] - (hs[0] * cM_e.unsqueeze(-1)).mT @ K
    newA = None if A is None else tuple(advance(A))
    if S is not None and co["gamma"] is not None:
        wS = co["DS"][:, -1] * th  # type: ignore[index]
        H_e = co["H"][:, -1]  # type: ignore[index]
        S = tuple(_bcast(H_e, s) * s - usum(j, wS) for j, s in enumerate(S))
    if completes and newA is not None:
        return Y, project(spec, newA, batch_dims=1), newA, S, None
    return Y, tuple(newP), newA, S, None


def _reads(
    spec: MemorySpec,
    Q: Tensor,
    K: Tensor,
    P: tuple[Tensor, ...],
    Pg: tuple[Tensor, ...],
    S: tuple[Tensor, ...] | None,
    co: dict[str, Tensor | None],
    zs: list[Tensor],
    hs: list[Tensor],
    deltas: tuple[Tensor, ...],
    norm: tuple,
) -> Tensor:
    """``M_{P_t}(q_t)`` for every token of the chunk in the dual form (README "reads")."""
    if spec.read == "chunk":
        return memory_forward(spec, Pg, Q, norm)[0]
    beta, gamma, cS, cM = co["beta"], co["gamma"], co["cS"], co["cM"]
    if spec.read == "before":
        beta = _shift(beta, 1.0, False)
        gamma = _shift(gamma, 0.0, False)
        cS, cM = _shift(cS, 0.0, True), _shift(cM, 0.0, True)
    assert beta is not None and cS is not None
    L = spec.n_layers
    act = activation_fn(spec.activation)
    vector = spec.memory == "vector"
    b1 = beta.unsqueeze(-1)
    g1 = None if gamma is None else gamma.unsqueeze(-1)
    r = Q
    for li in range(L):
        w = P[li]
        if vector:
            a = b1 * (r * w.unsqueeze(-2))
            if g1 is not None:
                assert S is not None
                a = a + g1 * (r * S[li].unsqueeze(-2))
            a = a - r * (cS @ (deltas[li] * zs[li]))
        else:
            a = (b1 * r) @ w.mT
            if g1 is not None:
                assert S is not None
                a = a + (g1 * r) @ S[li].mT
            overlap = r @ zs[li].mT  # [G, n, n]: z_s . r_t
            if spec.bias:
                overlap = overlap + 1.0
            a = a - (cS * overlap) @ deltas[li]
            if li == 0 and cM is not None:  # DGD: -sum_s c_ts (k_s . q_t) W^g k_s
                a = a - (cM * (r @ K.mT)) @ hs[0]
        if spec.bias:
            jb = L + li
            a = a + b1 * P[jb].unsqueeze(-2)
            if g1 is not None:
                assert S is not None
                a = a + g1 * S[jb].unsqueeze(-2)
            if vector:
                a = a - cS @ deltas[li]
        r = act(a) if li < L - 1 else a
    out = layer_norm(r, norm[0], norm[1], spec.norm_eps) if spec.norm == "layernorm" else r
    return Q + out if spec.is_residual else out
