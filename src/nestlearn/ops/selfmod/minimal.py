"""One Hope block in one file: a per-token executable spec.

Plain PyTorch, no nestlearn imports. ``minimal_selfmod_mixer(layer, x)`` computes what
``nestlearn.memory.self_modifying.SelfModifyingTitans`` (as the ``hope`` family configures it:
the :class:`SelfModifyingOptions` defaults) returns for a fresh sequence, from that layer's own
weights, one token at a time, with every inner gradient written out by hand;
``minimal_hope_block(block, x)`` adds the pre-norm residuals and the CMS FFN (in-context,
sequential, swiglu levels, objective "next", retention) of ``build_hope_block``. It is the
readable companion of ``README.md`` in this folder; tests/ops/test_selfmod_minimal.py holds both
equal to the real modules to 1e-9 in float64.

Scope: the hope defaults (silu memories, DGD, momentum, weight decay, adaptive k and v, fixed q,
per-memory convs, exact_output, hidden_chunk, retain_to_init; CMS as above), a fresh sequence
(no threaded state), writes on (not frozen). Not: the Table 6 ablation switches, other
activations, adaptive q, the nested / independent / outer / static CMS variants, the "ntp" CMS
objective.

Nested Learning (arXiv 2512.24695) eqs. 83-93. Every memory, per head, is a residual MLP
``M(z) = z + W1 silu(W0 z)`` (eq. 89). Axis legend: B batch, T tokens, H heads, F head dim,
n projection memories (k, v, eta, alpha), G = n H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mv(W: Tensor, z: Tensor) -> Tensor:
    """Per-(batch, head) matrix-vector product: ``[B, G, o, i] x [B, G, i] -> [B, G, o]``."""
    return torch.einsum("bgoi,bgi->bgo", W, z)


def outer(a: Tensor, b: Tensor) -> Tensor:
    return a[..., :, None] * b[..., None, :]


def mlp(W0: Tensor, W1: Tensor, z: Tensor) -> Tensor:
    """The memory ``M(z) = z + W1 silu(W0 z)`` (eq. 89)."""
    return z + mv(W1, F.silu(mv(W0, z)))


def dsilu(h: Tensor) -> Tensor:
    s = torch.sigmoid(h)
    return s * (1 + h * (1 - s))


def write(W, S, A, prior, k, vhat, lr, m, alpha, C):
    """One DGD write of a memory toward ``||M(k) - vhat||^2`` (eqs. 88, 91), the strong-write rule.

    ``W`` the running weights, ``S`` momentum, ``A`` the chunk's anchor (the weights at the
    chunk start), ``prior`` the meta-learned initial weights; gates ``[B, G]``; ``C`` chunk size.
    Gradient point: hidden layer at the anchor, output layer at the running weights (exact).
    """
    (W0, W1), (A0, _), (S0, S1), P0 = W, A, S, prior[0]
    lr, m, ret = lr[..., None, None], m[..., None, None], (1 - alpha)[..., None, None]
    h = mv(A0, k)
    s = F.silu(h)
    e = 2 * (k + mv(W1, s) - vhat)  # d loss / d M(k)
    g1 = outer(e, s) / s.pow(2).sum(-1).clamp_min(1.0)[..., None, None]  # normalised delta rule
    g0 = outer(torch.einsum("bgoi,bgo->bgi", W1, e) * dsilu(h), k) / C  # mean over the chunk
    S0, S1 = m * S0 - lr * g0, m * S1 - lr * g1  # momentum
    W0n = ret * W0 + S0 + (1 - ret) * P0  # hidden layer retains toward its initial weights
    W0n = W0n - lr * outer(mv(A0, k), k)  # DGD: W0 (I - lr k k^T), k k^T on the anchor
    W1n = ret * W1 + S1  # output layer retains toward zero
    return (W0n, W1n), (S0, S1)


def renorm(W, A):
    """Chunk end: every hidden-layer row back to its chunk-start norm."""
    n, r = W[0].norm(dim=-1, keepdim=True), A[0].norm(dim=-1, keepdim=True)
    return (torch.where(n > 1e-6 * r, W[0] * (r / n.clamp_min(1e-30)), A[0]), W[1])


def minimal_selfmod_mixer(layer, x: Tensor) -> Tensor:
    """``x [B, T, D] -> y [B, T, D]``: the mixer's forward, token by token, from ``layer``'s weights."""
    B, T, D = x.shape
    H, Fd = layer.n_heads, layer.head_dim
    n = len(layer.names)  # ("k", "v", "eta", "alpha")
    assert layer.names == ("k", "v", "eta", "alpha") and layer.fixed == ("q",)
    Cp, Cm = layer.proj_chunk_size, layer.chunk_size

    # input projection, one copy of the memory input per projection memory, then the causal
    # depthwise conv (each copy its own filter), silu: x_box per memory and the fixed q (§8.3)
    u = x @ layer.w_in.weight.T
    u = torch.cat([u[..., :D].repeat(1, 1, n), u[..., D:]], dim=-1)
    K, w = layer.conv_size, layer.conv_weight
    up = F.pad(u, (0, 0, K - 1, 0))
    u = sum(up[:, j : j + T] * w[j] for j in range(K))
    parts = F.silu(u).view(B, T, n + 1, H, Fd)
    xs = parts[:, :, :n].reshape(B, T, n * H, Fd)  # memory j of head h at j H + h
    q_fixed = parts[:, :, n]
    mom = layer.momentum_max * torch.sigmoid(x @ layer.w_mom.weight.T + layer.mom_bias)

    def start(ps):  # meta-learned initial memories, expanded over the batch
        return tuple(p.expand(B, *p.shape) for p in ps)

    Pp, Pm = start(layer.proj_init), start(layer.mem_init)  # the priors (retain_to_init)
    Wp, Wm = Pp, Pm
    Sp, Sm = tuple(torch.zeros_like(w) for w in Wp), tuple(torch.zeros_like(w) for w in Wm)

    def rep(t: Tensor) -> Tensor:  # [B, H, ...] -> [B, n H, ...]: one copy per projection memory
        return t.repeat(1, n, *([1] * (t.dim() - 2)))

    ys = []
    for t in range(T):
        if t % Cp == 0:
            Ap = Wp  # projection memories' anchor: their weights at the chunk start (eq. 90)
        if t % Cm == 0:
            Am = Wm  # main memory's anchor
        # adaptive projections, all read at the anchor (eqs. 84-85)
        out = mlp(*Ap, xs[:, t]).view(B, n, H, Fd)
        k = F.normalize(out[:, 0], dim=-1)
        v = F.normalize(out[:, 1], dim=-1)
        q = F.normalize(q_fixed[:, t], dim=-1)
        eta = layer.max_lr * torch.sigmoid((out[:, 2] * layer.eta_readout).sum(-1) + layer.eta_bias)
        alpha = torch.sigmoid((out[:, 3] * layer.alpha_readout).sum(-1) + layer.alpha_bias)
        m = mom[:, t]
        # read before write (eq. 86): hidden layer at the anchor, output layer running
        ys.append(q + mv(Wm[1], F.silu(mv(Am[0], q))))
        # self-generated values (eq. 83), at each memory's anchor, then one write each (eq. 88)
        vhat_p, vhat_m = mlp(*Ap, rep(v)), mlp(*Am, v)
        lr_p = rep(eta * layer.proj_lr_scale)
        Wp, Sp = write(Wp, Sp, Ap, Pp, rep(k), vhat_p, lr_p, rep(m), rep(alpha), Cp)
        Wm, Sm = write(Wm, Sm, Am, Pm, k, vhat_m, eta, m, alpha, Cm)
        if (t + 1) % Cp == 0:
            Wp = renorm(Wp, Ap)
        if (t + 1) % Cm == 0:
            Wm = renorm(Wm, Am)
    o = torch.stack(ys, dim=1)  # [B, T, H, F]
    o = F.rms_norm(o, (Fd,)) * layer.out_norm_weight  # per-head output norm
    o = o.reshape(B, T, D) * torch.sigmoid(x @ layer.wg.weight.T)  # output gate
    return o @ layer.wo.weight.T


# ----------------------------------------------------------------------------------------------
# The whole Hope block: pre-norm residual, the mixer above, then the CMS FFN (eqs. 94-97)


def rmsnorm(x: Tensor, w: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """RMSNorm computed in ``dtype``. The block's norms (``layers/norm.RMSNorm``) compute in
    float32 even for float64 input; the CMS level norms in float64 for float64 input."""
    xf = x.to(dtype)
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.to(dtype)).to(x.dtype)


def swiglu(Wi: Tensor, Wo: Tensor, z: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Level MLP ``Wo (silu(g) * u)``, ``[g; u] = Wi z``; per-sequence weights ``[B, ., .]``."""
    g, u = torch.einsum("bhd,bd->bh", Wi, z).chunk(2, dim=-1)
    a = F.silu(g) * u
    return torch.einsum("bdh,bh->bd", Wo, a), (g, u, a)


def cms_level(level, x: Tensor, lr: Tensor, period: int, keep: float) -> Tensor:
    """One in-context CMS level (eq. 71, objective "next"), token by token.

    Fast weights ``W = W_0 + Delta``. Token ``t`` adds the gradient of
    ``1/2 ||MLP_W(x_{t-1}) - x_t||^2`` (predict the next input) to the chunk's sum; at every
    ``period`` boundary ``Delta <- keep Delta - lr sum``; then ``y_t = MLP_W(x_t)``.
    """
    B, T, _ = x.shape
    Wi0 = torch.cat([level.w_gate.weight, level.w_up.weight], dim=0).expand(B, -1, -1)
    Wo0 = level.w_down.weight.expand(B, -1, -1)
    Di, Do = torch.zeros_like(Wi0), torch.zeros_like(Wo0)
    Gi, Go = torch.zeros_like(Wi0), torch.zeros_like(Wo0)
    ys = []
    for t in range(T):
        Wi, Wo = Wi0 + Di, Wo0 + Do
        if t > 0:  # the previous token's target is now known: accumulate its gradient
            out, (g, u, a) = swiglu(Wi, Wo, x[:, t - 1])
            e = out - x[:, t]
            da = torch.einsum("bdh,bd->bh", Wo, e)
            dh = torch.cat([da * u * dsilu(g), da * F.silu(g)], dim=-1)
            Gi, Go = Gi + outer(dh, x[:, t - 1]), Go + outer(e, a)
        if t % period == 0 and t > 0:
            Di, Do = keep * Di - lr * Gi, keep * Do - lr * Go
            Gi, Go = torch.zeros_like(Gi), torch.zeros_like(Go)
            Wi, Wo = Wi0 + Di, Wo0 + Do
        ys.append(swiglu(Wi, Wo, x[:, t])[0])
    return torch.stack(ys, dim=1)


def minimal_hope_block(block, x: Tensor) -> Tensor:
    """``x [B, T, D] -> [B, T, D]``: one Hope block (``hope`` family defaults, fresh sequence).

    ``h = x + mixer(norm(x))``; ``y = h + CMS(norm(h))`` where the CMS is the sequential chain
    ``u_0 = norm(h)``, ``b_l = MLP_l(norm_l(u_{l-1}))`` (no norm on the first level),
    ``u_l = u_{l-1} + b_l``, and the block adds ``sum_l b_l`` (eqs. 70, 73, 97).
    """
    f32, cdt = torch.float32, torch.promote_types(x.dtype, torch.float32)
    h = x + minimal_selfmod_mixer(
        block.mixer, rmsnorm(x, block.mixer_norm.weight, block.mixer_norm.eps, f32)
    )
    cms = block.ffn
    assert cms.in_context and cms.cfg.variant == "sequential" and cms.cfg.activation == "swiglu"
    lrs = cms.cfg.lr_max * torch.sigmoid(cms.lr_logit)  # learned per-token rate of each level
    keep = 1.0 - cms.cfg.retention
    u = rmsnorm(h, block.ffn_norm.weight, block.ffn_norm.eps, f32)
    y = torch.zeros_like(h)
    for i, (level, period) in enumerate(zip(cms.levels, cms.periods)):
        z = u if level.norm_weight is None else rmsnorm(u, level.norm_weight, level.eps, cdt)
        b = cms_level(level, z, lrs[i] / period, period, keep)  # eq. 71: eta = lr / C
        u, y = u + b, y + b
    return h + y
