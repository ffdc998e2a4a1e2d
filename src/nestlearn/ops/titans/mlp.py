"""The residual-MLP memory path of :func:`nestlearn.ops.titans.chunk_titans` (README "MLP").

The chunk loop calls one pure function per chunk, :func:`mlp_chunk_step`: the write path's
forward and hand-derived inner backward at the chunk's anchor, the per-token reads, and the
chunk-end update. Everything weight-independent (decays, momentum mixing, ``q k^T``) is built for
all chunks at once by the caller. Because the step is a pure tensor function with the inner
gradients written by hand (no double backward), ``nestlearn.ops.compiled`` can compile it once
and reuse it for every chunk (``train.compile``, ``bench --compile``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nestlearn.ops.compiled import chunk_step
from nestlearn.ops.recompute import run_grouped
from nestlearn.ops.titans.common import Activation, activation_backward_fn, activation_fn

if TYPE_CHECKING:
    from nestlearn.ops.titans.chunk import _Coefs

__all__ = ["mlp_chunk_step", "mlp_chunks"]


def renorm_rows(w: Tensor, ref: Tensor) -> Tensor:
    """Rescale each row of ``w [G, o, i]`` to the norm of the same row of ``ref``.

    A row that the update has erased (norm below ``1e-6`` of the reference, e.g. a forget gate
    saturated at 1 with no write) keeps its reference row: there is no direction to rescale.
    """
    n, r = w.norm(dim=-1, keepdim=True), ref.norm(dim=-1, keepdim=True)
    return torch.where(n > 1e-6 * r, w * (r / n.clamp_min(1e-30)), ref)


def mlp_chunk_step(
    Wc: list[Tensor],
    Sc: list[Tensor] | None,
    Wa: list[Tensor],
    Kc: Tensor,
    KQc: Tensor,
    KV2c: Tensor,
    cSc: Tensor,
    lastc: Tensor,
    bC: Tensor,
    Qc: Tensor | None = None,
    b_c: Tensor | None = None,
    Qgc: Tensor | None = None,
    g_c: Tensor | None = None,
    AS1c: Tensor | None = None,
    AM1c: Tensor | None = None,
    lastMc: Tensor | None = None,
    wSc: Tensor | None = None,
    gC: Tensor | None = None,
    hC: Tensor | None = None,
    bbc: Tensor | None = None,
    ggc: Tensor | None = None,
    cSbc: Tensor | None = None,
    prior: list[Tensor] | None = None,
    *,
    activation: Activation,
    aligned: bool,
    self_target: bool,
    hidden_chunk: bool,
    exact_output: bool,
    renorm: bool,
    chunk_size: int,
) -> tuple[Tensor | None, list[Tensor], list[Tensor] | None]:
    """One chunk of the MLP memory, ``[G, ...]`` tensors of this chunk; returns ``(y, W', S')``.

    ``Wc``/``Sc``: weights and momentum at the chunk start; ``Wa``: the weights its gradients are
    taken at (``Wc`` unless the call started mid-chunk, ``aligned=False``). ``Kc [G, C, Dk]``;
    ``KQc``: the layer-0 inputs stacked on the token axis (``k``, then ``v`` for self-targets, then
    the read inputs); ``KV2c = 2 (k - v)``. Coefficients (``_Coefs``): ``cSc [G, C, C]``, chunk-end
    rows ``lastc``/``lastMc``/``wSc [G, C, 1]`` and ``bC``/``gC``/``hC [G, 1, 1]``, read rows
    ``b_c``/``g_c [G, C, 1]``, the before-write rows ``bbc``/``ggc``/``cSbc`` (``exact_output``).
    Reads: ``Qc`` (``None``: update only), ``Qgc = gamma q``, ``AS1c``/``AM1c`` the layer-0
    read/write overlaps. ``renorm``: the hidden layers advance this chunk (keep row norms).
    """
    L = len(Wc)
    C = Kc.shape[-2]
    act, act_bwd = activation_fn(activation), activation_backward_fn(activation)
    mom = Sc is not None
    reads = Qc is not None
    # 1. write path at the anchor: forward, then the hand-derived backward of ||M(k) - v||^2
    read0 = hv = None
    if aligned:  # every layer-0 input in one matmul
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
    zL = Z[L - 1]
    if exact_output:
        # the output layer at its running weights W_{t-1} = bb_t W + gg_t S - sum_{j<t} ...
        out_pred = bbc * (zL @ Wc[L - 1].mT)
        if mom:
            out_pred = torch.baddbmm(out_pred, ggc * zL, Sc[L - 1].mT)
    Dl[L - 1] = torch.add(KV2c, out_pred, alpha=2.0)  # 2 (M(k) - v), residual memory
    if self_target:
        for li in range(1, L):
            hv = act(hv) @ Wa[li].mT
        Dl[L - 1] = torch.add(Dl[L - 1], hv, alpha=-2.0)  # target M(v) = v + hv
    if exact_output:
        # every earlier write of the chunk has moved the output layer: solve the per-token
        # recurrence D_t = E_t - 2 sum_{j<t} cSb[t, j] (z_j . z_t) D_j (unit lower triangular);
        # the output layer's step is normalised by its input energy, nrm_j = 1 / max(1,
        # ||z_j||^2), so a write never removes more than 2 theta of the error
        nrm = 1.0 / zL.pow(2).sum(-1, keepdim=True).clamp_min(1.0)  # [G, C, 1]
        Ab = 2.0 * cSbc * (zL @ (nrm * zL).mT)
        eyeC = torch.eye(C, dtype=Kc.dtype, device=Kc.device)
        DL = torch.linalg.solve_triangular(
            Ab + eyeC, Dl[L - 1], upper=False, unitriangular=True
        )
        Dn = nrm * DL
        back = bbc * (DL @ Wc[L - 1])
        if mom:
            back = torch.baddbmm(back, ggc * DL, Sc[L - 1])
        back = torch.baddbmm(back, cSbc * (DL @ Dn.mT), zL, alpha=-1.0)
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
    y = None
    if reads:
        # 2. read path with per-token weights W_t = beta_t W + gamma_t S - sum_s c_ts delta_s
        # z_s^T (row scalings are applied to the narrow input r; baddbmm fuses each subtraction)
        r = Qc
        for li in range(L):
            if hidden_chunk and li < L - 1:
                # hidden layers are read at the chunk-start weights
                a = read0 if li == 0 else r @ Wa[li].mT
                r = act(a)
                continue
            if li == 0:
                a = read0
            elif li == L - 1:  # the residual q is folded into the last matmul
                a = torch.baddbmm(Qc, b_c * r, Wc[li].mT)
            else:
                a = torch.bmm(b_c * r, Wc[li].mT)
            if mom:
                rg = Qgc if li == 0 else g_c * r
                a = torch.baddbmm(a, rg, Sc[li].mT)
            if li == 0:
                a = torch.baddbmm(a, AS1c, Dl[0], alpha=-1.0)
                if AM1c is not None:
                    # DGD: -theta (W^g k_s)(k_s . q_t)
                    a = torch.baddbmm(a, AM1c, Hs[0], alpha=-1.0)
            else:
                a = torch.baddbmm(a, cSc * (r @ Z[li].mT), Dl[li], alpha=-1.0)
            r = act(a) if li < L - 1 else a
        y = r
    # 3. chunk end: the last row of the coefficients applies every write at once
    newW, newS = [], []
    for li in range(L):
        g = lastc * Dl[li]  # [G, C, o]
        if li == 0 and lastMc is not None:
            g = torch.addcmul(g, lastMc, Hs[0])
        if mom:
            decayed = torch.addcmul(bC * Wc[li], gC, Sc[li])
            newW.append(torch.baddbmm(decayed, g.mT, Z[li], alpha=-1.0))
            newS.append(torch.baddbmm(hC * Sc[li], (wSc * Dl[li]).mT, Z[li], alpha=-1.0))
        else:
            newW.append(torch.baddbmm(bC * Wc[li], g.mT, Z[li], alpha=-1.0))
        if prior is not None and li < L - 1:
            # retention pulls a hidden layer toward its prior (sum_r DM[C, r] (1 - a_r) = 1 - b)
            newW[li] = torch.addcmul(newW[li], 1.0 - bC, prior[li])
    if hidden_chunk and renorm:
        # the hidden layers advance once per chunk: keep each row's chunk-start norm
        newW = [renorm_rows(w, ref) for w, ref in zip(newW[:-1], Wa[:-1])] + [newW[-1]]
    return y, newW, newS if mom else None


def mlp_chunks(
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
    N = K.shape[0]
    reads = Q is not None
    beta = co.beta.unsqueeze(-1)  # [N, G, C, 1]
    gamma = None if co.gamma is None else co.gamma.unsqueeze(-1)

    # unbind() once instead of indexing [c] in the loop: an indexed view's backward allocates the
    # whole [N, ...] tensor per chunk (O(N^2) memory traffic).
    def per_chunk(x: Tensor | None) -> list[Tensor | None]:
        return [None] * N if x is None else list(x.unbind(0))

    # weight-independent pieces, batched over chunks: the layer-0 inputs of the write path (k, and
    # v for self-targets) and of the read path (beta q, gamma q) share one matmul per chunk;
    # 2 (k - v) seeds the error.
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
    KQb = torch.cat(parts, dim=-2) if len(parts) > 1 else K  # [N, G, n_in C, Dk]
    fields: dict[str, list[Tensor | None]] = {
        "Kc": per_chunk(K),
        "KQc": per_chunk(KQb),
        "KV2c": per_chunk(2.0 * (K - V)),
        "cSc": per_chunk(co.cS),
        "lastc": per_chunk(co.cS_end.unsqueeze(-1)),
        "bC": per_chunk(co.beta_end[..., None, None]),
        "Qc": per_chunk(Q),
        "b_c": per_chunk(beta if reads else None),
        "Qgc": per_chunk(Qg),
        "g_c": per_chunk(gamma if reads else None),
        "AS1c": per_chunk(AS1),
        "AM1c": per_chunk(AM1),
        "lastMc": per_chunk(None if co.cM_end is None else co.cM_end.unsqueeze(-1)),
        "wSc": per_chunk(None if co.wS_end is None else co.wS_end.unsqueeze(-1)),
        "gC": per_chunk(None if co.gamma_end is None else co.gamma_end[..., None, None]),
        "hC": per_chunk(None if co.H_end is None else co.H_end[..., None, None]),
    }
    if pre is not None:
        fields["bbc"] = per_chunk(pre[0].unsqueeze(-1))
        fields["ggc"] = per_chunk(None if pre[1] is None else pre[1].unsqueeze(-1))
        fields["cSbc"] = per_chunk(pre[2])
    pri = None if prior is None else list(prior)
    flags = dict(
        activation=activation, self_target=self_target, hidden_chunk=hidden_chunk,
        exact_output=pre is not None, chunk_size=chunk_size,
    )  # fmt: skip
    step = chunk_step(mlp_chunk_step)

    def chunk_range(
        c0: int, c1: int, carry: tuple[tuple[Tensor, ...], tuple[Tensor, ...] | None]
    ) -> tuple[tuple[list[Tensor], tuple[Tensor, ...]], tuple[tuple[Tensor, ...], Any]]:
        Wc = list(carry[0])
        Sc = None if carry[1] is None else list(carry[1])
        ys: list[Tensor] = []
        last_start = Wc
        for c in range(c0, c1):
            # the first chunk of a call that starts mid-chunk writes at its anchor
            aligned = not (c == 0 and A is not None)
            Wa = Wc if aligned else list(A)  # type: ignore[arg-type]
            last_start = Wc
            args = {name: f[c] for name, f in fields.items()}
            fn = step if aligned else mlp_chunk_step  # the mid-chunk head is a one-off shape
            y, Wc, Sc = fn(
                Wc, Sc, Wa, **args, prior=pri, aligned=aligned,
                renorm=c < N - 1 or complete_last, **flags,
            )  # fmt: skip
            if y is not None:
                ys.append(y)
        return (ys, tuple(last_start)), (tuple(Wc), None if Sc is None else tuple(Sc))

    outs, (Wn, Sn) = run_grouped(
        N, group, chunk_range, (tuple(W), None if S is None else tuple(S))
    )
    Y = torch.stack([y for o in outs for y in o[0]]) if reads else None
    return Y, Wn, Sn, outs[-1][1]
