"""Reference (slow, obviously correct) Titans memory updates: the spec for ``chunk.py``.

Both functions share ``chunk_titans``'s signature and loop over tokens in Python. Inner gradients
come from ``torch.func.grad`` of the memory loss (autograd), *not* from the hand-derived matmuls of
the chunked op, so comparing the two also checks the derivation.

Update rule per token t (Titans eqs. 12-14 with Nested Learning's DGD, eqs. 57/88):

    u_t   = grad_W ||M_W(k_t) - v_t||^2 at the gradient point W^g      (per memory layer)
    S_t   = eta_t S_{t-1} - theta_t u_t                                 (momentum; S_t = -theta_t u_t without)
    W_t   = (1 - alpha_t) W_{t-1} + S_t                                 (forgetting / weight decay)
    W_t[0] -= theta_t (W^g[0] k_t) k_t^T                                (optimizer="dgd": input-side weight)
    y_t   = M_{W_t}(q_t)        read="after" (Titans);  "before": M_{W_{t-1}}(q_t) (NL eqs. 86/94)

``naive_recurrent_titans`` takes the gradient point ``W^g = W_{t-1}`` (the exact per-token
recurrence). ``naive_chunk_titans`` takes ``W^g`` = the weights at the start of the token's chunk
(chunk-wise training, Nested Learning eqs. 90-91 read as "the last state of the previous chunk").

Inner math runs in float32 (float64 for float64 inputs); outputs are cast back to the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad

from nestlearn.ops.titans.common import (
    Activation,
    Optimizer,
    Read,
    TitansState,
    activation_fn,
    check_inputs,
    check_prior,
    memory_forward,
    start_state,
)

__all__ = ["naive_chunk_titans", "naive_recurrent_titans"]


def _step(
    W: list[Tensor],
    S: list[Tensor] | None,
    Wg: list[Tensor],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    th: Tensor,
    et: Tensor | None,
    al: Tensor | None,
    activation: Activation,
    optimizer: Optimizer,
    read: Read,
    self_target: bool = False,
    exact_output: bool = False,
    hidden_chunk: bool = False,
    chunk_size: int = 1,
    prior: list[Tensor] | None = None,
) -> tuple[list[Tensor], list[Tensor] | None, Tensor | None]:
    """One token. ``q, k, v: [B, H, D]``; gates ``[B, H]``; weights ``[B, H, o, i]``.

    The gradient point is ``Wg``; with ``exact_output`` its output layer is the running
    ``W[-1]`` instead (the hidden layers stay at ``Wg``).
    """
    # self-generated value (NL eq. 83): a constant of the inner gradient, differentiable outside
    target = memory_forward(Wg, v, activation) if self_target else v
    gp = [*Wg[:-1], W[-1]] if exact_output else Wg

    def loss(ws: list[Tensor]) -> Tensor:
        # Summing over (B, H) is fine: each per-(b, h) weight slice only affects its own term.
        return (memory_forward(ws, k, activation) - target).pow(2).sum()

    g = list(grad(loss)(gp))
    if exact_output:
        # the output layer's step is normalised by its input energy (at the gradient point)
        z = k
        for w in gp[:-1]:
            z = activation_fn(activation)((w @ z.unsqueeze(-1)).squeeze(-1))
        nrm = 1.0 / z.pow(2).sum(-1).clamp_min(1.0)
        g[-1] = g[-1] * nrm[..., None, None]
    if hidden_chunk:
        g[:-1] = [gi / chunk_size for gi in g[:-1]]
    th4 = th[..., None, None]
    upd = [-th4 * gi for gi in g]
    if S is not None:
        assert et is not None
        S = [et[..., None, None] * s + u for s, u in zip(S, upd)]
        upd = S
    ret = 1.0 if al is None else (1.0 - al)[..., None, None]
    Wn = [ret * w + u for w, u in zip(W, upd)]
    if prior is not None:  # hidden layers retain toward their prior, not toward zero
        Wn[:-1] = [w + (1.0 - ret) * p for w, p in zip(Wn[:-1], prior[:-1])]
    if optimizer == "dgd":
        # eq. 88: W (alpha I - eta k k^T); the k k^T factor multiplies the gradient-point weights
        pk = (gp[0] @ k.unsqueeze(-1)).squeeze(-1)  # [B, H, d_out]
        Wn[0] = Wn[0] - th4 * pk.unsqueeze(-1) * k.unsqueeze(-2)
    Wr = Wn if read == "after" else W
    if hidden_chunk:
        Wr = [*Wg[:-1], Wr[-1]]  # hidden layers read at the chunk start
    y = None if q is None else memory_forward(Wr, q, activation)
    return Wn, S, y


def renorm_hidden(W: list[Tensor], Wg: list[Tensor]) -> list[Tensor]:
    """Chunk end with ``hidden_chunk``: each hidden-layer row back to its chunk-start norm."""
    out = []
    for w, g in zip(W[:-1], Wg[:-1]):
        n, r = w.norm(dim=-1, keepdim=True), g.norm(dim=-1, keepdim=True)
        out.append(torch.where(n > 1e-6 * r, w * (r / n.clamp_min(1e-30)), g))  # erased: keep g
    return [*out, W[-1]]


def naive_chunk_titans(
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
) -> tuple[Tensor | None, TitansState]:
    """Chunk-wise Titans update as a plain token loop (gradients at each chunk's start weights).

    Same signature and contract as :func:`nestlearn.ops.titans.chunk.chunk_titans`.

    Args:
        q, k: ``[B, T, H, Dk]`` (``q=None``: update only, ``y`` is ``None``); v: ``[B, T, H, Dv]``.
        theta: ``[B, T, H]`` inner learning rate; eta: momentum gate or ``None`` (no momentum);
            alpha: forget gate or ``None`` (no forgetting).
        initial_state: see :class:`TitansState`; ``None`` = zero linear memory.
        chunk_size: tokens per chunk; chunks are aligned to ``initial_state.offset``.
        self_target: target ``M_{W^g}(v_t)`` instead of ``v_t`` (NL eq. 83; MLP memories).

    Returns:
        ``(y [B, T, H, Dv], final_state)``.
    """
    check_inputs(
        q, k, v, theta, eta, alpha, initial_state, chunk_size, optimizer, read, self_target
    )
    check_prior(hidden_prior, hidden_chunk, initial_state)
    ins = (q, k, v, theta, eta, alpha)
    cdt, (qc, kc, vc, tc, ec, ac), state = start_state(ins, initial_state)
    prior = None if hidden_prior is None else [p.to(cdt) for p in hidden_prior]
    W = list(state.weights)
    S = None if state.momentum is None else list(state.momentum)
    Wg = list(state.anchor) if state.offset > 0 else W
    pos = state.offset
    ys = []
    for t in range(k.shape[1]):
        if pos % chunk_size == 0:
            Wg = W  # a new chunk: its gradients are taken at the weights it starts from
        W, S, y = _step(
            W, S, Wg, None if qc is None else qc[:, t], kc[:, t], vc[:, t], tc[:, t],
            None if ec is None else ec[:, t], None if ac is None else ac[:, t],
            activation, optimizer, read, self_target, exact_output, hidden_chunk, chunk_size,
            prior,
        )  # fmt: skip
        ys.append(y)
        pos += 1
        if hidden_chunk and pos % chunk_size == 0:
            W = renorm_hidden(W, Wg)
    off = pos % chunk_size
    final = TitansState(
        tuple(W), None if S is None else tuple(S), tuple(Wg) if off > 0 else None, off
    )
    if q is None:
        return None, final
    y = torch.stack(ys, dim=2).transpose(1, 2)  # [B, H, T, Dv] -> [B, T, H, Dv]
    return y.to(q.dtype), final


def naive_recurrent_titans(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    eta: Tensor | None = None,
    alpha: Tensor | None = None,
    initial_state: TitansState | None = None,
    *,
    chunk_size: int = 1,
    activation: Activation = "silu",
    optimizer: Optimizer = "gd",
    read: Read = "after",
) -> tuple[Tensor, TitansState]:
    """The exact per-token Titans recurrence (gradient at the previous token's weights).

    Equals ``naive_chunk_titans(..., chunk_size=1)``. ``chunk_size`` is accepted for a shared
    signature and ignored; ``initial_state`` must sit on a chunk boundary (``offset == 0``).

    Returns:
        ``(y [B, T, H, Dv], final_state)`` with ``final_state.offset == 0``.
    """
    del chunk_size
    check_inputs(q, k, v, theta, eta, alpha, initial_state, 1, optimizer, read)
    ins = (q, k, v, theta, eta, alpha)
    cdt, (qc, kc, vc, tc, ec, ac), state = start_state(ins, initial_state)
    W = list(state.weights)
    S = None if state.momentum is None else list(state.momentum)
    ys = []
    for t in range(q.shape[1]):
        W, S, y = _step(
            W, S, W, qc[:, t], kc[:, t], vc[:, t], tc[:, t],
            None if ec is None else ec[:, t], None if ac is None else ac[:, t],
            activation, optimizer, read,
        )  # fmt: skip
        ys.append(y)
    final = TitansState(tuple(W), None if S is None else tuple(S), None, 0)
    y = torch.stack(ys, dim=2).transpose(1, 2)
    return y.to(q.dtype), final
