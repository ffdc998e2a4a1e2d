"""Mini-batch TTT in its dual form: a loop over mini-batches, matmuls inside each.

Same signature and contract as ``naive.naive_ttt`` (per-token loop): equal to it up to rounding
at any ``mini_batch_size``; with ``mini_batch_size=1`` both are plain online GD. Derivation in
``README.md``; in short, for a mini-batch whose inner gradients are taken at the anchor weights
``W^a`` and whose reads start from the weights ``W^0`` (``W^a == W^0`` except when a call
resumes a mini-batch mid-way):

    TTT-Linear: Z = K W1a + b1a,  G = dl/dZ (LayerNorm backward, closed form)
                Zq = Q W1 + b1 - (tril(Q K^T + 1) * eta_s) G               # all reads at once
                W1 -= K^T (eta * G),  b1 -= sum_s eta_s G_s                 # end-of-batch weights
    TTT-MLP:    the same per layer; the second layer's "queries" are ``gelu(Zq1)`` and its keys
                ``gelu(Z1)`` (Sun et al. 2024, section 2.5 / Appendix A, the dual form).

Only the weights cross mini-batches, so the Python loop runs over ``T / b`` mini-batches (not
tokens) and everything weight-independent (``Q K^T`` masks, targets) is built for all of them
up front. Output LayerNorms are applied once after the loop.

Inner math in float32 (float64 for float64 inputs); ``o`` is cast back to ``q.dtype`` and the state
stays in the compute dtype.

Axis legend: B batch, T tokens, H heads, G = B * H fused batch, M mini-batches, L / S target /
source positions in a mini-batch (b of them), F head dim, Fh MLP hidden dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.ops.common import pad_axis
from nestlearn.ops.ttt.common import (
    TTTState,
    check_inputs,
    compute_dtype,
    gelu_tanh_grad,
    layer_norm,
    ln_l2_grad,
)

__all__ = ["chunk_ttt"]


def chunk_ttt(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    initial_state: TTTState,
    *,
    mini_batch_size: int = 16,
    eps: float = 1e-6,
) -> tuple[Tensor, TTTState]:
    """Mini-batch TTT (TTT-Linear or TTT-MLP, picked by the state's weights), dual form.

    Args:
        q: ``[B, T, H, F]`` queries (read path).
        k: ``[B, T, H, F]`` keys (inner-model inputs on the write path).
        v: ``[B, T, H, F]`` values (the inner target is ``v - k``).
        eta: ``[B, T, H]`` inner learning rate of each token's gradient.
        ln_weight, ln_bias: ``[H, F]`` the per-head LayerNorm's affine parameters.
        initial_state: :class:`TTTState` with the inner weights ``[B, H, ...]`` to start from.
        mini_batch_size: ``b``; gradients inside a mini-batch are taken at its first weights.
        eps: LayerNorm epsilon.

    Returns:
        ``(o, final_state)``: ``o: [B, T, H, F]`` in ``q.dtype``; threading ``final_state`` into a
        next call equals one call over the concatenated tokens.

    Example::

        >>> B, T, H, Fd = 2, 50, 4, 16
        >>> q, k, v = (torch.randn(B, T, H, Fd) for _ in range(3))
        >>> eta = torch.full((B, T, H), 0.05)
        >>> W0 = TTTState((torch.randn(B, H, Fd, Fd) * 0.1, torch.zeros(B, H, Fd)))
        >>> o, st = chunk_ttt(q, k, v, eta, torch.ones(H, Fd), torch.zeros(H, Fd), W0)
        >>> o.shape, st.offset
        (torch.Size([2, 50, 4, 16]), 2)
    """
    check_inputs(q, k, v, eta, ln_weight, ln_bias, initial_state, mini_batch_size)
    cdt = compute_dtype(q)
    Bsz, T, H, Fd = q.shape
    G, bs = Bsz * H, mini_batch_size
    st = initial_state.to(cdt)

    def fuse_w(ws: tuple[Tensor, ...]) -> list[Tensor]:
        return [w.reshape(G, *w.shape[2:]) for w in ws]  # [B, H, ...] -> [G, ...]

    def seq(x: Tensor) -> Tensor:  # [B, T, H, *] -> [G, T, *]
        return x.to(cdt).transpose(1, 2).reshape(G, T, *x.shape[3:])

    qs, ks, vs, es = seq(q), seq(k), seq(v), seq(eta)
    lw = ln_weight.to(cdt).expand(Bsz, H, Fd).reshape(G, 1, Fd)
    lb = ln_bias.to(cdt).expand(Bsz, H, Fd).reshape(G, 1, Fd)
    W = fuse_w(st.weights)
    anchor = fuse_w(st.anchor) if st.anchor is not None else None
    off = st.offset

    zq_parts = []
    head = min(bs - off, T) if off > 0 else 0  # tokens that finish a mini-batch under way
    if head > 0:
        assert anchor is not None
        sl = slice(0, head)
        zq, W = _minibatches(
            qs[:, None, sl],
            ks[:, None, sl],
            vs[:, None, sl],
            es[:, None, sl],
            W,
            anchor,
            lw,
            lb,
            eps,
        )
        zq_parts.append(zq.reshape(G, head, Fd))
        off += head
        if off == bs:
            off, anchor = 0, None
    rest = T - head
    if rest > 0:
        cl = min(bs, rest)  # one short mini-batch is not padded: decode costs one token
        M = -(-rest // cl)

        def blocks(x: Tensor) -> Tensor:  # [G, rest, *] -> [G, M, L, *], zero padded
            x = x[:, head:]
            x = pad_axis(x, M * cl)
            return x.reshape(G, M, cl, *x.shape[2:])

        # Padded tokens have eta = 0: they move no weight, and their reads are cropped.
        zq, W, last_start = _minibatches(
            blocks(qs), blocks(ks), blocks(vs), blocks(es), W, None, lw, lb, eps, keep_last=True
        )
        zq_parts.append(zq.reshape(G, M * cl, Fd)[:, :rest])
        off = rest % bs
        anchor = last_start if off else None
    if zq_parts:
        zq = torch.cat(zq_parts, dim=1) if len(zq_parts) > 1 else zq_parts[0]
        o = qs + layer_norm(zq, lw, lb, eps)  # [G, T, F]
    else:
        o = qs
    o = o.reshape(Bsz, H, T, Fd).transpose(1, 2).to(q.dtype)

    def unfuse(ws: list[Tensor]) -> tuple[Tensor, ...]:
        return tuple(w.reshape(Bsz, H, *w.shape[1:]) for w in ws)

    return o, TTTState(unfuse(W), unfuse(anchor) if anchor is not None else None, off)


def _minibatches(
    Q: Tensor,
    K: Tensor,
    V: Tensor,
    E: Tensor,
    W: list[Tensor],
    anchor: list[Tensor] | None,
    lw: Tensor,
    lb: Tensor,
    eps: float,
    keep_last: bool = False,
):
    """Run ``M`` consecutive mini-batches ``Q, K, V: [G, M, L, F]``, ``E: [G, M, L]``.

    ``anchor`` (first mini-batch only) is where its gradients are taken; ``None`` means at its
    starting weights ``W``. Returns the pre-LayerNorm reads ``[G, M, L, F]``, the weights after the
    last mini-batch and, with ``keep_last``, the weights at the start of the last mini-batch.
    """
    M, L = Q.shape[1], Q.shape[2]
    causal = torch.ones(L, L, dtype=torch.bool, device=Q.device).tril()
    # Weight-independent pieces for every mini-batch at once.
    target = V - K  # the inner model reconstructs v - k (the residual's x is added back)
    eta_s = E.unsqueeze(-2)  # [G, M, 1, S]: column s carries token s's learning rate
    A1 = ((Q @ K.transpose(-1, -2) + 1.0) * eta_s).masked_fill(~causal, 0.0)  # [G, M, L, S]
    # unbind once: indexing [:, m] inside the loop would make every slice's backward allocate
    # and zero-fill a tensor of the full [G, M, ...] shape (quadratic in M).
    Ks, Qs, Es, A1s, tgts = (t.unbind(1) for t in (K, Q, E, A1, target))
    reads, last_start = [], W
    for m in range(M):
        last_start = W
        Wa = anchor if (m == 0 and anchor is not None) else W
        Km, Qm, Em = Ks[m], Qs[m], Es[m][..., None]
        if len(W) == 2:
            W1, b1 = W
            Z = Km @ Wa[0] + Wa[1][:, None]  # [G, L, F] at the anchor
            gZ = ln_l2_grad(Z, tgts[m], lw, lb, eps)
            reads.append(Qm @ W1 + b1[:, None] - A1s[m] @ gZ)
            eg = Em * gZ
            W = [W1 - Km.transpose(-1, -2) @ eg, b1 - eg.sum(1)]
        else:
            W1, b1, W2, b2 = W
            Z1 = Km @ Wa[0] + Wa[1][:, None]  # [G, L, Fh]
            X2 = F.gelu(Z1, approximate="tanh")
            Z2 = X2 @ Wa[2] + Wa[3][:, None]  # [G, L, F]
            gZ2 = ln_l2_grad(Z2, tgts[m], lw, lb, eps)
            gZ1 = (gZ2 @ Wa[2].transpose(-1, -2)) * gelu_tanh_grad(Z1)
            X2q = F.gelu(Qm @ W1 + b1[:, None] - A1s[m] @ gZ1, approximate="tanh")
            A2 = ((X2q @ X2.transpose(-1, -2) + 1.0) * Es[m][:, None, :]).masked_fill(~causal, 0.0)
            reads.append(X2q @ W2 + b2[:, None] - A2 @ gZ2)
            eg1, eg2 = Em * gZ1, Em * gZ2
            W = [
                W1 - Km.transpose(-1, -2) @ eg1,
                b1 - eg1.sum(1),
                W2 - X2.transpose(-1, -2) @ eg2,
                b2 - eg2.sum(1),
            ]
    zq = torch.stack(reads, dim=1)
    if keep_last:
        return zq, W, last_start
    return zq, W
