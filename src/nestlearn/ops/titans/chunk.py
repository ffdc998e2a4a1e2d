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

import torch
from torch import Tensor

from nestlearn.ops import compiled
from nestlearn.ops.common import pad_axis, shift_right
from nestlearn.ops.recompute import check_recompute_group, grad_flows, recompute_active
from nestlearn.ops.scan import decay_matrix, exp_flush, log_gate
from nestlearn.ops.titans.common import (
    Activation,
    Optimizer,
    Read,
    TitansState,
    check_inputs,
    check_prior,
    start_state,
    steady_titans_state,
)
from nestlearn.ops.titans.linear import linear_chunks, linear_exact_chunks
from nestlearn.ops.titans.mlp import mlp_chunks

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
    cdt, ins, state = start_state((q, k, v, theta, eta, alpha), initial_state)
    prior = None if hidden_prior is None else tuple(
        p.to(cdt).reshape(B * H, *p.shape[2:]) for p in hidden_prior[:-1]
    )
    if compiled.stepping():  # one compiled graph for the first chunk and the rest
        state = steady_titans_state(state, grad_flows(ins, state.weights, prior))

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
    x = pad_axis(x, n * cl, dim=1, value=fill)
    x = x.reshape(B, n, cl, H, *extra)
    perm = (1, 0, 3, 2) + tuple(range(4, 4 + len(extra)))
    return x.permute(*perm).reshape(n, B * H, cl, *extra).contiguous()


def _from_chunks(y: Tensor, B: int, H: int, T: int) -> Tensor:
    """``[N, G, C, D]`` -> ``[B, T, H, D]``."""
    n, _, cl, d = y.shape
    return y.reshape(n, B, H, cl, d).permute(1, 0, 3, 2, 4).reshape(B, n * cl, H, d)[:, :T]


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
        beta = shift_right(self.beta, -1, 1.0)
        gamma = None if self.gamma is None else shift_right(self.gamma, -1, 0.0)
        cS = shift_right(self.cS, -2, 0.0)
        cM = None if self.cM is None else shift_right(self.cM, -2, 0.0)
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
        Y, Wn, Sn, Wl = linear_exact_chunks(Q, K, V, co, pre, Wg, Sg, group)
    elif len(W) == 1:
        Y, Wn, Sn, Wl = linear_chunks(Q, K, V, co, Wg, Sg, Ag, activation, group)
    else:
        Y, Wn, Sn, Wl = mlp_chunks(
            Q, K, V, co, Wg, Sg, Ag, activation, self_target, hidden_chunk, complete_last, pre,
            chunk_size, prior, group,
        )

    def back(ts: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(t.reshape(B, H, *t.shape[1:]) for t in ts)

    y = None if Y is None else _from_chunks(Y, B, H, T)
    return y, back(Wn), None if Sn is None else back(Sn), back(Wl)
