"""The linear-memory paths of :func:`nestlearn.ops.titans.chunk_titans` (README "linear memory").

``linear_chunks``: gradients at the chunk start, the chunk step is affine in ``[M | S]`` (one
``baddbmm`` per chunk). ``linear_exact_chunks``: every gradient at the token's running weights
(``exact_output``), one unit-triangular solve per chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from nestlearn.ops.recompute import group_views, run_grouped
from nestlearn.ops.titans.common import Activation

if TYPE_CHECKING:
    from nestlearn.ops.titans.chunk import _Coefs

__all__ = ["linear_chunks", "linear_exact_chunks"]


def linear_chunks(
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


def linear_exact_chunks(
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
