"""Chunk-parallel Titans memory update: the hot path of Titans (LMM) and, later, Hope.

Inner math in float32 (float64 when the inputs are float64); outputs are cast back to the input
dtype and the returned state stays in the compute dtype.

Contract (same as ``naive.naive_chunk_titans``; derivation in ``README.md``): tokens are grouped into
chunks of ``chunk_size`` (aligned to ``initial_state.offset``). For every token ``t`` of a chunk
that starts from weights ``W^g``:

    u_t  = grad_W ||M_W(k_t) - v_t||^2  at W = W^g                          (Titans eq. 12)
    S_t  = eta_t S_{t-1} - theta_t u_t            (or S_t = -theta_t u_t without momentum; eq. 13)
    W_t  = (1 - alpha_t) W_{t-1} + S_t                                         (eq. 14)
    W_t[0] -= theta_t (W^g[0] k_t) k_t^T          (optimizer="dgd", NL eqs. 57/88/91, input side)
    y_t  = M_{W_t}(q_t)                            (read="after", Titans; "before": M_{W_{t-1}})

So gradients are frozen at the chunk start (NL eqs. 90-91, "the last state of the previous chunk")
but momentum, forgetting and reads are exact per token: the reads are the "dual form" of TTT,
``W_t q = beta_t W^g q + gamma_t S^g q - sum_{s<=t} c_ts (z_s . q) delta_s``, one ``[C, C]`` matmul
per layer. Equivalences: with ``chunk_size=1`` this is the per-token Titans recurrence
(``naive_recurrent_titans``); at any chunk size it equals ``naive_chunk_titans`` up to rounding.

No per-token Python loop and no host sync: weight-independent coefficients (decays, momentum
mixing, ``q k^T`` products) are built for all chunks in a few batched ops; the Python loop runs
over chunks only. For the linear memory the whole chunk step collapses to an affine map of the
state (``M' = beta M + gamma S + B - M^g F``), so the loop body is one ``baddbmm`` and the reads are
one batched matmul after the loop.

Axis legend: B batch, T tokens, H heads, N chunks, C tokens per chunk, G = B*H fused batch,
Dk / Dv key / value dims, o / i a memory layer's output / input dims.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.ops.recompute import (
    check_recompute_group,
    group_views,
    recompute_active,
    run_grouped,
)
from nestlearn.ops.scan import decay_matrix, exp_flush, log_gate
from nestlearn.ops.titans.common import (
    Activation,
    Optimizer,
    Read,
    TitansState,
    activation_backward_fn,
    activation_fn,
    check_inputs,
    check_prior,
    zeros_state,
)

__all__ = ["chunk_titans"]


def chunk_titans(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    eta: Tensor | None = None,
    alpha: Tensor | None = None,
    initial_state: TitansState | None = None,
    *,
    chunk_size: int = 64,
    activation: Activation = "silu",
    optimizer: Optimizer = "gd",
    read: Read = "after",
    self_target: bool = False,
    exact_output: bool = False,
    hidden_chunk: bool = False,
    hidden_prior: tuple[Tensor, ...] | None = None,
    recompute_group: int | None = None,
) -> tuple[Tensor | None, TitansState]:
    """Multi-head Titans neural-memory update and read, chunk-parallel.

    Args:
        q: ``[B, T, H, Dk]`` queries (read path), or ``None`` to update the memory without reading
            it (then ``y`` is ``None``).
        k: ``[B, T, H, Dk]`` keys (write path).
        v: ``[B, T, H, Dv]`` values (targets of the inner l2 loss).
        theta: ``[B, T, H]`` inner learning rate ``theta_t >= 0``.
        eta: ``[B, T, H]`` momentum gate in ``[0, 1]`` ("past surprise"), or ``None`` for plain GD.
        alpha: ``[B, T, H]`` forget gate in ``[0, 1]`` (``1 - alpha`` multiplies the old weights),
            or ``None`` for no forgetting.
        initial_state: :class:`TitansState`; ``None`` means a zero linear memory ``[B, H, Dv, Dk]``.
            Its number of weights picks the memory: 1 = linear ``M(x) = W x``, ``L >= 2`` = residual
            MLP ``M(x) = x + W_{L-1} s(... s(W_0 x))`` (``Dk == Dv``).
        chunk_size: tokens per chunk ``C``; gradients inside a chunk use its starting weights.
        activation: the MLP memory's ``s``: ``"silu"``, ``"gelu"`` or ``"relu"``.
        optimizer: ``"gd"`` or ``"dgd"`` (adds the data-dependent decay ``-theta (W^g k) k^T`` on
            the input-side weight; with ``alpha`` this is DGD with weight decay, NL eq. 88).
        read: ``"after"``: ``y_t = M_t(q_t)``, the memory after token ``t``'s write (Titans);
            ``"before"``: ``y_t = M_{t-1}(q_t)`` (Nested Learning eqs. 86/94, Hope).
        self_target: the inner target of token ``t`` is the memory's own output on ``v_t`` at the
            gradient point, ``v_hat_t = M_{W^g}(v_t)`` (self-generated values, Nested Learning
            eqs. 83/90); MLP memories only. The target is a constant of the inner gradient but
            stays differentiable for the outer loss.
        exact_output, hidden_chunk, hidden_prior: the strong-write rule (``README.md``, "Exact
            output layer").
        recompute_group: chunk-group recompute (``nestlearn.ops.recompute``): while a gradient
            is recorded, the chunk loop runs in groups of this many chunks and keeps only a state
            snapshot per group for backward, which re-runs each group; ``None`` or ``0`` keeps
            every chunk's tensors. Same outputs and gradients either way; only memory changes.

    Returns:
        ``(y, final_state)``: ``y`` is ``[B, T, H, Dv]`` in ``q.dtype``; ``final_state`` carries the
        weights, momentum and (mid-chunk) the chunk's anchor weights and offset, so threading it
        into a next call equals one call over the concatenated tokens.

    Example::

        >>> B, T, H, D = 2, 100, 4, 16
        >>> q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
        >>> theta, eta, alpha = (torch.rand(B, T, H) * 0.1 for _ in range(3))
        >>> y, st = chunk_titans(q, k, v, theta, eta, alpha, chunk_size=32)
        >>> y.shape, st.weights[0].shape, st.offset
        (torch.Size([2, 100, 4, 16]), torch.Size([2, 4, 16, 16]), 4)
    """
    check_inputs(
        q, k, v, theta, eta, alpha, initial_state, chunk_size, optimizer, read, self_target
    )
    check_prior(hidden_prior, hidden_chunk, initial_state)
    group = check_recompute_group(recompute_group)
    if not recompute_active(group, q, k, v, theta, eta, alpha, initial_state, hidden_prior):
        group = 0
    B, T, H, Dk = k.shape
    cdt = torch.float64 if k.dtype == torch.float64 else torch.float32
    prior = None if hidden_prior is None else tuple(
        p.to(cdt).reshape(B * H, *p.shape[2:]) for p in hidden_prior[:-1]
    )
    if initial_state is None:
        initial_state = zeros_state(
            B, H, [(v.shape[-1], Dk)], momentum=False, dtype=cdt, device=k.device
        )
    state = initial_state.to(cdt)
    if eta is not None and state.momentum is None:
        state = state._replace(momentum=tuple(torch.zeros_like(w) for w in state.weights))
    ins = [None if t is None else t.to(cdt) for t in (q, k, v, theta, eta, alpha)]

    C, off = chunk_size, state.offset
    head = min(C - off, T) if off > 0 else 0  # tokens that finish the chunk already under way
    ys = []
    W, S = state.weights, state.momentum
    anchor = state.anchor if off > 0 else None
    if head > 0:
        y, W, S, _ = _segment(
            [None if t is None else t[:, :head] for t in ins],
            W,
            S,
            anchor,
            head,
            activation,
            optimizer,
            read,
            self_target,
            hidden_chunk and off + head == C,
            hidden_chunk,
            exact_output,
            C,
            prior,
            group,
        )
        ys.append(y)
        off = off + head
        if off == C:
            off, anchor = 0, None
    rest = T - head
    if rest > 0:
        # A single short chunk is not padded: decode (T = 1) costs one token, not one chunk.
        cl = C if rest > C else rest
        y, W, S, last_start = _segment(
            [None if t is None else t[:, head:] for t in ins],
            W,
            S,
            None,
            cl,
            activation,
            optimizer,
            read,
            self_target,
            hidden_chunk and rest % C == 0,
            hidden_chunk,
            exact_output,
            C,
            prior,
            group,
        )
        ys.append(y)
        off = rest % C
        anchor = last_start if off > 0 else None
    if q is None:
        return None, TitansState(W, S, anchor, off)
    out = torch.cat(ys, dim=1) if len(ys) > 1 else ys[0]
    return out.to(q.dtype), TitansState(W, S, anchor, off)


# --------------------------------------------------------------------------------------------
# layout helpers


def _to_chunks(x: Tensor, n: int, cl: int, fill: float) -> Tensor:
    """``[B, T, H, *D]`` -> ``[N, G, C, *D]`` (contiguous), padding T at the end with ``fill``."""
    B, T, H = x.shape[:3]
    extra = x.shape[3:]
    pad = n * cl - T
    if pad:
        # pad the T axis (dim 1); F.pad lists pads from the last dim backwards
        x = F.pad(x, (0, 0) * len(extra) + (0, 0, 0, pad), value=fill)
    x = x.reshape(B, n, cl, H, *extra)
    perm = (1, 0, 3, 2) + tuple(range(4, 4 + len(extra)))
    return x.permute(*perm).reshape(n, B * H, cl, *extra).contiguous()


def _from_chunks(y: Tensor, B: int, H: int, T: int) -> Tensor:
    """``[N, G, C, D]`` -> ``[B, T, H, D]``."""
    n, _, cl, d = y.shape
    return y.reshape(n, B, H, cl, d).permute(1, 0, 3, 2, 4).reshape(B, n * cl, H, d)[:, :T]


def _renorm_rows(w: Tensor, ref: Tensor) -> Tensor:
    """Rescale each row of ``w [G, o, i]`` to the norm of the same row of ``ref``.

    A row that the update has erased (norm below ``1e-6`` of the reference, e.g. a forget gate
    saturated at 1 with no write) keeps its reference row: there is no direction to rescale.
    """
    n, r = w.norm(dim=-1, keepdim=True), ref.norm(dim=-1, keepdim=True)
    return torch.where(n > 1e-6 * r, w * (r / n.clamp_min(1e-30)), ref)


class _Coefs:
    """Weight-independent chunk coefficients, ``[N, G, C(, C)]`` (see README "coefficients").

    cS[t, s]: weight of u_s in W_t (through momentum); cM[t, s]: weight of the DGD term; beta_t,
    gamma_t: weights of W^g and S^g in W_t. The ``*_end`` fields are the same quantities at the last
    real token of each chunk (the last chunk may be padded, and with momentum a padded token is not
    a no-op: W keeps integrating S). ``wS_end[s]`` / ``H_end``: weights of u_s and S^g in S at the end.
    """

    def __init__(
        self, theta: Tensor, eta: Tensor | None, alpha: Tensor | None, dgd: bool, last_row: int
    ) -> None:
        self.last_row = last_row
        la = log_gate(1.0 - alpha) if alpha is not None else torch.zeros_like(theta)
        DM = decay_matrix(la)  # DM[t, r] = prod_{r<j<=t} (1 - alpha_j)
        self.beta = exp_flush(la.cumsum(-1))  # prod_{j<=t} (1 - alpha_j)
        cth = DM * theta.unsqueeze(-2)  # DM diag(theta)
        self.cM = cth if dgd else None
        self.gamma: Tensor | None = None
        self.wS_end: Tensor | None = None
        self.H_end: Tensor | None = None
        if eta is not None:
            le = log_gate(eta)
            DS = decay_matrix(le)  # DS[r, s] = prod_{s<j<=r} eta_j
            Hc = exp_flush(le.cumsum(-1))  # prod_{j<=r} eta_j
            self.cS = DM @ (DS * theta.unsqueeze(-2))  # sum_r DM[t,r] DS[r,s] theta_s
            self.gamma = (DM @ Hc.unsqueeze(-1)).squeeze(-1)
            self.wS_end = self.end(DS) * theta  # DS[end, s] theta_s
            self.H_end = self.end(Hc.unsqueeze(-1)).squeeze(-1)
        else:
            self.cS = cth
        self.cS_end = self.end(self.cS)  # [N, G, C]
        self.cM_end = None if self.cM is None else self.end(self.cM)
        self.beta_end = self.end(self.beta.unsqueeze(-1)).squeeze(-1)  # [N, G]
        self.gamma_end = (
            None if self.gamma is None else self.end(self.gamma.unsqueeze(-1)).squeeze(-1)
        )

    def before(self) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """``(beta, gamma, cS, cM)`` of ``W_{t-1}``, the weights before token ``t``'s write.

        Row ``t`` is row ``t - 1`` of the after-write coefficients; row 0 is the chunk-start
        state (``beta = 1``, ``gamma = 0``, no in-chunk writes), so ``cS`` and ``cM`` become
        strictly lower triangular.
        """
        beta = F.pad(self.beta[..., :-1], (1, 0), value=1.0)
        gamma = None if self.gamma is None else F.pad(self.gamma[..., :-1], (1, 0), value=0.0)
        cS = F.pad(self.cS[..., :-1, :], (0, 0, 1, 0), value=0.0)
        cM = None if self.cM is None else F.pad(self.cM[..., :-1, :], (0, 0, 1, 0), value=0.0)
        return beta, gamma, cS, cM

    def shift_reads(self) -> None:
        """Make ``cS, cM, beta, gamma`` describe ``W_{t-1}`` (read before the token's write).

        The ``*_end`` rows, used for the update, are unchanged.
        """
        self.beta, self.gamma, self.cS, self.cM = self.before()

    def end(self, x: Tensor) -> Tensor:
        """Row ``C - 1`` of ``x [N, G, C, ...]`` for full chunks and ``last_row`` for the last."""
        rows = x[:, :, -1]
        if self.last_row == x.shape[2] - 1:
            return rows
        return torch.cat([rows[:-1], x[-1:, :, self.last_row]], dim=0)


# --------------------------------------------------------------------------------------------
# one aligned segment: chunks of equal length cl, the first optionally with its own anchor


def _segment(
    ins: list[Tensor | None],
    W: tuple[Tensor, ...],
    S: tuple[Tensor, ...] | None,
    anchor: tuple[Tensor, ...] | None,
    cl: int,
    activation: Activation,
    optimizer: Optimizer,
    read: Read,
    self_target: bool = False,
    complete_last: bool = False,
    hidden_chunk: bool = False,
    exact_output: bool = False,
    chunk_size: int = 0,
    prior: tuple[Tensor, ...] | None = None,
    group: int = 0,
) -> tuple[Tensor | None, tuple[Tensor, ...], tuple[Tensor, ...] | None, tuple[Tensor, ...]]:
    """Run chunks of length ``cl`` over ``ins = [q, k, v, theta, eta, alpha]`` (``[B, T, H, ...]``).

    ``group > 0``: the chunk loop runs in checkpointed groups of ``group`` chunks (recompute).
    Returns ``(y [B, T, H, Dv] or None without q, W_end, S_end, W_at_start_of_last_chunk)``.
    """
    q, k, v, theta, eta, alpha = ins
    assert k is not None and v is not None and theta is not None
    B, T, H, _ = k.shape
    n = -(-T // cl)
    K, V = (_to_chunks(x, n, cl, 0.0) for x in (k, v))
    Q = None if q is None else _to_chunks(q, n, cl, 0.0)
    # Padded tokens write nothing (theta = 0) and decay nothing; the chunk-end quantities are read
    # at the last real token anyway (see _Coefs.end), since W keeps integrating S over padding.
    th = _to_chunks(theta, n, cl, 0.0)
    et = None if eta is None else _to_chunks(eta, n, cl, 1.0)
    al = None if alpha is None else _to_chunks(alpha, n, cl, 0.0)
    co = _Coefs(th, et, al, optimizer == "dgd", last_row=(T - 1) % cl)
    pre = co.before() if exact_output else None
    if read == "before":
        co.shift_reads()
    G = B * H
    Wg = tuple(w.reshape(G, *w.shape[2:]) for w in W)
    Sg = None if S is None else tuple(s.reshape(G, *s.shape[2:]) for s in S)
    Ag = None if anchor is None else tuple(a.reshape(G, *a.shape[2:]) for a in anchor)
    if len(W) == 1 and pre is not None:
        Y, Wn, Sn, Wl = _linear_exact_chunks(Q, K, V, co, pre, Wg, Sg, group)
    elif len(W) == 1:
        Y, Wn, Sn, Wl = _linear_chunks(Q, K, V, co, Wg, Sg, Ag, activation, group)
    else:
        Y, Wn, Sn, Wl = _mlp_chunks(
            Q, K, V, co, Wg, Sg, Ag, activation, self_target, hidden_chunk, complete_last, pre,
            chunk_size, prior, group,
        )

    def back(ts: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(t.reshape(B, H, *t.shape[1:]) for t in ts)

    y = None if Y is None else _from_chunks(Y, B, H, T)
    return y, back(Wn), None if Sn is None else back(Sn), back(Wl)


def _linear_chunks(
    Q: Tensor | None,
    K: Tensor,
    V: Tensor,
    co: _Coefs,
    W: tuple[Tensor, ...],
    S: tuple[Tensor, ...] | None,
    A: tuple[Tensor, ...] | None,
    activation: Activation,
    group: int = 0,
) -> tuple[Tensor | None, tuple[Tensor, ...], tuple[Tensor, ...] | None, tuple[Tensor, ...]]:
    """Linear memory ``M: [G, Dv, Dk]``; chunk tensors ``[N, G, C, D]``. README "linear memory".

    ``group > 0``: the chunk loop and its reads run in checkpointed groups of ``group`` chunks."""
    del activation
    N, Dk = K.shape[0], K.shape[-1]
    mom = S is not None
    last = co.cS_end  # [N, G, C]
    wC = 2.0 * last if co.cM_end is None else 2.0 * last + co.cM_end
    betaC = co.beta_end[..., None, None]  # [N, G, 1, 1]
    Kt = K.mT
    Dv = V.shape[-1]
    gammaC = HC = None
    if mom:
        assert co.wS_end is not None and co.gamma_end is not None and co.H_end is not None
        # chunk end: M' = beta M + gamma S + Bm - M^g Fm ;  S' = H S + Bs - M^g Fs
        FF = Kt @ torch.cat([wC.unsqueeze(-1) * K, (2.0 * co.wS_end).unsqueeze(-1) * K], dim=-1)
        BB = 2.0 * (torch.cat([last.unsqueeze(-1) * V, co.wS_end.unsqueeze(-1) * V], dim=-1).mT @ K)
        gammaC = co.gamma_end[..., None, None]
        HC = co.H_end[..., None, None]
    else:
        FF = Kt @ (wC.unsqueeze(-1) * K)  # [N, G, Dk, Dk]
        BB = 2.0 * ((last.unsqueeze(-1) * V).mT @ K)  # [N, G, Dv, Dk]
    # The chunk step is affine in X = [M | S] (aligned chunks, anchor = start):
    #   X' = X @ Tc + BB,  Tc = [[beta I - Fm, -Fs], [gamma I, H I]]   (without momentum X = M)
    # so the loop body is a single baddbmm. unbind() (not c-indexing) keeps backward O(N).
    eye = torch.eye(Dk, dtype=K.dtype, device=K.device)
    if mom:
        assert gammaC is not None and HC is not None
        Tc = torch.cat(
            [
                torch.cat([betaC * eye - FF[..., :Dk], -FF[..., Dk:]], dim=-1),
                torch.cat([gammaC * eye, HC * eye], dim=-1),
            ],
            dim=-2,
        )  # [N, G, 2Dk, 2Dk]
        BBx = torch.cat([BB[..., :Dv, :], BB[..., Dv:, :]], dim=-1)  # [N, G, Dv, 2Dk]
        assert S is not None
        X = torch.cat([W[0], S[0]], dim=-1)
    else:
        Tc = betaC * eye - FF
        BBx = BB
        X = W[0]
    Ts, Bs = Tc.unbind(0), BBx.unbind(0)
    lhs_g = Yc_g = R0 = None
    if Q is not None:
        # the reads' weight-independent parts, batched over chunks
        qk = Q @ K.mT  # [N, G, C, C]
        AS = co.cS * qk  # cS is zero above the diagonal, so this is also the causal mask
        WA = 2.0 * AS if co.cM is None else 2.0 * AS + co.cM * qk
        R = WA @ K  # [N, G, C, Dk]: in-chunk writes seen by the reads, as a multiple of M^g
        Yc = 2.0 * (AS @ V)  # [N, G, C, Dv]: the value part of the same writes
        lhs = co.beta.unsqueeze(-1) * Q - R
        if mom:
            assert co.gamma is not None
            lhs = torch.cat([lhs, co.gamma.unsqueeze(-1) * Q], dim=-1)
        lhs_g, Yc_g = group_views(lhs, group), group_views(Yc, group)
        R0 = R[0]

    def chunk_range(c0: int, c1: int, X: Tensor) -> tuple[tuple[Tensor | None, Tensor], Tensor]:
        starts = []
        for c in range(c0, c1):
            starts.append(X)
            if c == 0 and A is not None:
                # first chunk mid-way: writes use the anchor, decays/momentum act on the start
                P = A[0] @ FF[0]
                M0 = W[0]
                if mom:
                    assert S is not None and gammaC is not None and HC is not None
                    X = BBx[0] + torch.cat(
                        [betaC[0] * M0 + gammaC[0] * S[0] - P[..., :Dk],
                         HC[0] * S[0] - P[..., Dk:]],
                        dim=-1,
                    )  # fmt: skip
                else:
                    X = torch.baddbmm(BBx[0] + betaC[0] * M0, A[0], FF[0], alpha=-1.0)
            else:
                X = torch.baddbmm(Bs[c], X, Ts[c])
        if lhs_g is None or Yc_g is None:
            return (None, starts[-1]), X
        g = c0 // group if group > 0 else 0
        Xst = torch.stack(starts)  # [n, G, Dv, Dk or 2Dk]: state at each chunk start
        Y = lhs_g[g] @ Xst.mT + Yc_g[g]
        if c0 == 0 and A is not None:
            # first chunk: its writes were computed at the anchor, not at its start weights
            assert R0 is not None
            Y = torch.cat([(Y[0] + R0 @ (W[0] - A[0]).mT).unsqueeze(0), Y[1:]])
        return (Y, starts[-1]), X

    outs, X = run_grouped(N, group, chunk_range, X)
    M_end = X[..., :Dk]
    S_end = (X[..., Dk:],) if mom else None
    last_start = (outs[-1][1][..., :Dk],)
    if Q is None:
        return None, (M_end,), S_end, last_start
    Y = outs[0][0] if len(outs) == 1 else torch.cat([o[0] for o in outs])
    return Y, (M_end,), S_end, last_start


def _linear_exact_chunks(
    Q: Tensor | None,
    K: Tensor,
    V: Tensor,
    co: _Coefs,
    pre: tuple[Tensor, Tensor | None, Tensor, Tensor | None],
    W: tuple[Tensor, ...],
    S: tuple[Tensor, ...] | None,
    group: int = 0,
) -> tuple[Tensor | None, tuple[Tensor, ...], tuple[Tensor, ...] | None, tuple[Tensor, ...]]:
    """Linear memory with every gradient at the token's running weights (``exact_output``).

    The chunk solves the per-token recurrence exactly: with ``p_t = W_{t-1} k_t`` and
    ``W_{t-1} = bb_t W + gg_t S - sum_{j<t} (cSb[t,j] D_j + cMb[t,j] p_j) k_j^T`` and the error
    ``D_t = 2 (p_t - v_t)``, the predictions satisfy the unit lower-triangular system
    ``(I + (2 cSb + cMb) * K K^T) P = bb * K W^T + gg * K S^T + 2 (cSb * K K^T) V``. With
    momentum and forgetting this is the gated, momentum delta rule; without, DeltaNet's rule.
    """
    N, C = K.shape[0], K.shape[2]
    mom = S is not None
    bb, gg, cSb, cMb = pre
    kk = K @ K.mT  # [N, G, C, C]
    nrm = 1.0 / K.pow(2).sum(-1).clamp_min(1.0)  # [N, G, C]: step normalised by key energy
    A = 2.0 * cSb * nrm.unsqueeze(-2)
    if cMb is not None:
        A = A + cMb
    eye = torch.eye(C, dtype=K.dtype, device=K.device)
    Mx = (A * kk + eye).unbind(0)
    R2 = (2.0 * ((cSb * kk) @ (nrm.unsqueeze(-1) * V))).unbind(0)
    nrms = nrm.unsqueeze(-1).unbind(0)
    Ks, Vs = K.unbind(0), V.unbind(0)
    bbs = bb.unsqueeze(-1).unbind(0)
    ggs = [None] * N if gg is None else list(gg.unsqueeze(-1).unbind(0))
    cSe = co.cS_end.unsqueeze(-1).unbind(0)
    cMe = [None] * N if co.cM_end is None else list(co.cM_end.unsqueeze(-1).unbind(0))
    wSe = [None] * N if co.wS_end is None else list(co.wS_end.unsqueeze(-1).unbind(0))
    bCs = co.beta_end[..., None, None].unbind(0)
    gCs = [None] * N if co.gamma_end is None else list(co.gamma_end[..., None, None].unbind(0))
    hCs = [None] * N if co.H_end is None else list(co.H_end[..., None, None].unbind(0))
    reads = Q is not None
    bQ_g = cq_g = mq_g = gQ_g = None
    if reads:
        assert Q is not None
        # the reads' weight-independent parts, batched over chunks
        qk = Q @ K.mT
        bQ_g = group_views(co.beta.unsqueeze(-1) * Q, group)
        cq_g = group_views(co.cS * qk, group)
        mq_g = None if co.cM is None else group_views(co.cM * qk, group)
        gQ_g = None if co.gamma is None else group_views(co.gamma.unsqueeze(-1) * Q, group)

    def chunk_range(
        c0: int, c1: int, carry: tuple[Tensor, Tensor | None]
    ) -> tuple[tuple[Tensor | None, Tensor], tuple[Tensor, Tensor | None]]:
        Wc, Sc = carry
        Ds, Ps, starts = [], [], []
        for c in range(c0, c1):
            starts.append((Wc, Sc))
            Kc, Vc = Ks[c], Vs[c]
            base = bbs[c] * (Kc @ Wc.mT)
            if mom:
                assert Sc is not None
                base = torch.baddbmm(base, ggs[c] * Kc, Sc.mT)
            P = torch.linalg.solve_triangular(
                Mx[c], base + R2[c], upper=False, unitriangular=True
            )
            D = nrms[c] * 2.0 * (P - Vc)  # the normalised gradient rows
            Ds.append(D)
            Ps.append(P)
            g = cSe[c] * D
            if cMe[c] is not None:
                g = torch.addcmul(g, cMe[c], P)
            if mom:
                assert Sc is not None
                newW = torch.baddbmm(
                    torch.addcmul(bCs[c] * Wc, gCs[c], Sc), g.mT, Kc, alpha=-1.0
                )
                Sc = torch.baddbmm(hCs[c] * Sc, (wSe[c] * D).mT, Kc, alpha=-1.0)
            else:
                newW = torch.baddbmm(bCs[c] * Wc, g.mT, Kc, alpha=-1.0)
            Wc = newW
        if bQ_g is None or cq_g is None:
            return (None, starts[-1][0]), (Wc, Sc)
        k = c0 // group if group > 0 else 0
        Dst, Pst = torch.stack(Ds), torch.stack(Ps)
        W0s = torch.stack([w for w, _ in starts])
        Y = bQ_g[k] @ W0s.mT - cq_g[k] @ Dst
        if mq_g is not None:
            Y = Y - mq_g[k] @ Pst
        if gQ_g is not None:
            S0s = torch.stack([s for _, s in starts])  # type: ignore[misc]
            Y = Y + gQ_g[k] @ S0s.mT
        return (Y, starts[-1][0]), (Wc, Sc)

    outs, (Wc, Sc) = run_grouped(
        N, group, chunk_range, (W[0], S[0] if S is not None else None)
    )
    S_end = (Sc,) if mom else None
    last_start = (outs[-1][1],)
    if not reads:
        return None, (Wc,), S_end, last_start
    Y = outs[0][0] if len(outs) == 1 else torch.cat([o[0] for o in outs])
    return Y, (Wc,), S_end, last_start


def _mlp_chunks(
    Q: Tensor | None,
    K: Tensor,
    V: Tensor,
    co: _Coefs,
    W: tuple[Tensor, ...],
    S: tuple[Tensor, ...] | None,
    A: tuple[Tensor, ...] | None,
    activation: Activation,
    self_target: bool = False,
    hidden_chunk: bool = False,
    complete_last: bool = False,
    pre: tuple[Tensor, Tensor | None, Tensor, Tensor | None] | None = None,
    chunk_size: int = 0,
    prior: tuple[Tensor, ...] | None = None,
    group: int = 0,
) -> tuple[Tensor | None, tuple[Tensor, ...], tuple[Tensor, ...] | None, tuple[Tensor, ...]]:
    """Residual MLP memory, weights ``[G, o, i]``; chunk tensors ``[N, G, C, D]``. README "MLP".

    ``group > 0``: the chunk loop runs in checkpointed groups of ``group`` chunks (recompute).

    ``Q is None``: update only (no reads). ``self_target``: the target of token ``s`` is
    ``M_{W^g}(v_s)`` (NL eq. 83), so the error is ``2 (M(k_s) - M(v_s))`` at the anchor.
    """
    N, L = K.shape[0], len(W)
    exact_output = pre is not None
    act, act_bwd = activation_fn(activation), activation_backward_fn(activation)
    mom = S is not None
    reads = Q is not None
    last = co.cS_end.unsqueeze(-1)  # [N, G, C, 1]
    lastM = None if co.cM_end is None else co.cM_end.unsqueeze(-1)
    wS = None if co.wS_end is None else co.wS_end.unsqueeze(-1)
    beta = co.beta.unsqueeze(-1)  # [N, G, C, 1]
    gamma = None if co.gamma is None else co.gamma.unsqueeze(-1)
    betaC = co.beta_end[..., None, None]  # [N, G, 1, 1]
    gammaC = None if co.gamma_end is None else co.gamma_end[..., None, None]
    HC = None if co.H_end is None else co.H_end[..., None, None]

    # unbind() once instead of indexing [c] in the loop: an indexed view's backward allocates the
    # whole [N, ...] tensor per chunk (O(N^2) memory traffic).
    def per_chunk(x: Tensor | None) -> list[Tensor | None]:
        return [None] * N if x is None else list(x.unbind(0))

    # weight-independent pieces, batched over chunks: the layer-0 inputs of the write path (k, and
    # v for self-targets) and of the read path (beta q, gamma q) share one matmul per chunk;
    # 2 (k - v) seeds the error.
    C = K.shape[-2]
    AS1 = AM1 = Qg = None
    parts = [K]
    if self_target:
        parts.append(V)
    if reads:
        assert Q is not None
        qk = Q @ K.mT
        AS1 = co.cS * qk  # layer-0 read/write overlap (its inputs q, k do not depend on weights)
        AM1 = None if co.cM is None else co.cM * qk
        parts.append(Q if hidden_chunk else beta * Q)
        Qg = None if gamma is None else gamma * Q
    n_in = len(parts)
    KQb = torch.cat(parts, dim=-2) if n_in > 1 else K  # [N, G, n_in C, Dk]
    KV2 = 2.0 * (K - V)
    Qs, Ks, KQbs, Qgs, KV2s = (per_chunk(x) for x in (Q, K, KQb, Qg, KV2))
    AS1s, AM1s, cSs = (per_chunk(x) for x in (AS1, AM1, co.cS))
    lasts, lastMs, wSs = per_chunk(last), per_chunk(lastM), per_chunk(wS)
    betas, gammas, betaCs, gammaCs, HCs = (per_chunk(x) for x in (beta, gamma, betaC, gammaC, HC))

    bbs = ggs = cSbs = [None] * N
    eyeC = None
    if pre is not None:
        bbs, ggs, cSbs = (per_chunk(x) for x in (pre[0].unsqueeze(-1), None if pre[1] is None
                                                 else pre[1].unsqueeze(-1), pre[2]))
        eyeC = torch.eye(C, dtype=K.dtype, device=K.device)

    def chunk_range(
        c0: int, c1: int, carry: tuple[tuple[Tensor, ...], tuple[Tensor, ...] | None]
    ) -> tuple[tuple[list[Tensor], tuple[Tensor, ...]], tuple[tuple[Tensor, ...], Any]]:
        Wc = list(carry[0])
        Sc = None if carry[1] is None else list(carry[1])
        ys: list[Tensor] = []
        last_start = Wc
        for c in range(c0, c1):
            # the first chunk of a call that starts mid-chunk writes at its anchor
            Wa = list(A) if c == 0 and A is not None else Wc
            Kc, KQc, cSc = Ks[c], KQbs[c], cSs[c]
            assert Kc is not None and KQc is not None and cSc is not None
            b_c, g_c, bC, gC, hC = betas[c], gammas[c], betaCs[c], gammaCs[c], HCs[c]
            last_start = Wc
            # 1. write path at the anchor: forward, then the hand-derived backward of ||M(k) - v||^2
            read0 = hv = None
            if Wa is Wc:  # aligned chunk: every layer-0 input in one matmul
                h_all = (KQc @ Wc[0].mT).split(C, dim=-2)
                h0 = h_all[0]
                if self_target:
                    hv = h_all[1]
                if reads:
                    read0 = h_all[-1]
            else:  # first chunk mid-way: writes at the anchor, reads at the current weights
                n_w = 2 if self_target else 1
                hw = KQc[:, : n_w * C] @ Wa[0].mT
                h0 = hw[:, :C]
                if self_target:
                    hv = hw[:, C:]
                if reads:
                    read0 = KQc[:, n_w * C :] @ (Wa[0] if hidden_chunk else Wc[0]).mT
            Z, Hs = [Kc], [h0]
            for li in range(1, L):
                Z.append(act(Hs[-1]))
                Hs.append(Z[-1] @ Wa[li].mT)  # [G, C, o]
            Dl: list[Tensor] = [Kc] * L  # placeholder, every entry is overwritten
            out_pred = Hs[-1]
            if exact_output:
                # the output layer at its running weights W_{t-1} = bb_t W + gg_t S - sum_{j<t} ...
                zL = Z[L - 1]
                out_pred = bbs[c] * (zL @ Wc[L - 1].mT)
                if mom:
                    assert Sc is not None
                    out_pred = torch.baddbmm(out_pred, ggs[c] * zL, Sc[L - 1].mT)
            Dl[L - 1] = torch.add(KV2s[c], out_pred, alpha=2.0)  # 2 (M(k) - v), residual memory
            if self_target:
                assert hv is not None
                for li in range(1, L):
                    hv = act(hv) @ Wa[li].mT
                Dl[L - 1] = torch.add(Dl[L - 1], hv, alpha=-2.0)  # target M(v) = v + hv
            if exact_output:
                # every earlier write of the chunk has moved the output layer: solve the per-token
                # recurrence D_t = E_t - 2 sum_{j<t} cSb[t, j] (z_j . z_t) D_j (unit lower
                # triangular)
                # (the output layer's step is normalised by its input energy, nrm_j = 1 / max(1,
                # ||z_j||^2), so a write never removes more than 2 theta of the error)
                nrm = 1.0 / zL.pow(2).sum(-1, keepdim=True).clamp_min(1.0)  # [G, C, 1]
                Ab = 2.0 * cSbs[c] * (zL @ (nrm * zL).mT)
                DL = torch.linalg.solve_triangular(
                    Ab + eyeC, Dl[L - 1], upper=False, unitriangular=True
                )
                Dn = nrm * DL
                back = bbs[c] * (DL @ Wc[L - 1])
                if mom:
                    assert Sc is not None
                    back = torch.baddbmm(back, ggs[c] * DL, Sc[L - 1])
                back = torch.baddbmm(back, cSbs[c] * (DL @ Dn.mT), zL, alpha=-1.0)
                Dl[L - 2] = act_bwd(back, Hs[L - 2])
                Dl[L - 1] = Dn
                top = L - 2
            else:
                top = L - 1
            for li in range(top, 0, -1):
                Dl[li - 1] = act_bwd(Dl[li] @ Wa[li], Hs[li - 1])
            if hidden_chunk:
                # hidden layers take the chunk's mean gradient (mini-batch GD), not the sum
                Dl[:-1] = [d * (1.0 / chunk_size) for d in Dl[:-1]]
            if reads:
                # 2. read path with per-token weights W_t = beta_t W + gamma_t S -
                # sum_s c_ts delta_s z_s^T (row scalings are applied to the narrow input r;
                # baddbmm fuses each subtraction)
                Qc = Qs[c]
                assert Qc is not None
                r = Qc
                for li in range(L):
                    if hidden_chunk and li < L - 1:
                        # hidden layers are read at the chunk-start weights
                        a = read0 if li == 0 else r @ Wa[li].mT
                        assert a is not None
                        r = act(a)
                        continue
                    if li == 0:
                        assert read0 is not None
                        a = read0
                    elif li == L - 1:  # the residual q is folded into the last matmul
                        a = torch.baddbmm(Qc, b_c * r, Wc[li].mT)
                    else:
                        a = torch.bmm(b_c * r, Wc[li].mT)
                    if mom:
                        assert Sc is not None
                        rg = Qgs[c] if li == 0 else g_c * r
                        a = torch.baddbmm(a, rg, Sc[li].mT)
                    if li == 0:
                        a = torch.baddbmm(a, AS1s[c], Dl[0], alpha=-1.0)
                        if AM1s[c] is not None:
                            # DGD: -theta (W^g k_s)(k_s . q_t)
                            a = torch.baddbmm(a, AM1s[c], Hs[0], alpha=-1.0)
                    else:
                        a = torch.baddbmm(a, cSc * (r @ Z[li].mT), Dl[li], alpha=-1.0)
                    r = act(a) if li < L - 1 else a
                ys.append(r)
            # 3. chunk end: the last row of the coefficients applies every write at once
            newW, newS = [], []
            for li in range(L):
                g = lasts[c] * Dl[li]  # [G, C, o]
                if li == 0 and lastMs[c] is not None:
                    g = torch.addcmul(g, lastMs[c], Hs[0])
                if mom:
                    assert Sc is not None
                    decayed = torch.addcmul(bC * Wc[li], gC, Sc[li])
                    newW.append(torch.baddbmm(decayed, g.mT, Z[li], alpha=-1.0))
                    newS.append(torch.baddbmm(hC * Sc[li], (wSs[c] * Dl[li]).mT, Z[li], alpha=-1.0))
                else:
                    newW.append(torch.baddbmm(bC * Wc[li], g.mT, Z[li], alpha=-1.0))
                if prior is not None and li < L - 1:
                    # retention pulls a hidden layer toward its prior
                    # (sum_r DM[C, r] (1 - a_r) = 1 - b)
                    newW[li] = torch.addcmul(newW[li], 1.0 - bC, prior[li])
            if hidden_chunk and (c < N - 1 or complete_last):
                # the hidden layers advance once per chunk: keep each row's chunk-start norm
                newW = [_renorm_rows(w, ref) for w, ref in zip(newW[:-1], Wa[:-1])] + [newW[-1]]
            Wc = newW
            Sc = newS if mom else None
        return (ys, tuple(last_start)), (tuple(Wc), None if Sc is None else tuple(Sc))

    outs, (Wn, Sn) = run_grouped(
        N, group, chunk_range, (tuple(W), None if S is None else tuple(S))
    )
    Y = torch.stack([y for o in outs for y in o[0]]) if reads else None
    return Y, Wn, Sn, outs[-1][1]
