"""Reference (slow, obviously correct) mini-batch TTT: the spec for ``chunk.py``.

A Python loop over tokens. Each token's inner gradient comes from ``torch.autograd.grad`` of the
inner loss (not from the hand-derived LayerNorm/GELU backward of the chunked op), so comparing the
two also checks that derivation. Rule per token ``t`` (Sun et al. 2024, section 2.4, mini-batch
TTT; the mini-batch of ``t`` starts at ``t'``, mini-batches are aligned to the state's offset):

    g_t = grad_W l(W; k_t, v_t) at W = W_{t'}          (every gradient at the mini-batch start)
    W_t = W_{t-1} - eta_t g_t                           (eta_t: per token and head)
    o_t = q_t + LN(f_{W_t}(q_t))                        (read with the weights after token t)

so ``W`` at the end of a mini-batch is ``W_{t'} - sum_s eta_s g_s``. With ``mini_batch_size=1``
this is plain online gradient descent, one step per token.

Inner math runs in float32 (float64 for float64 inputs); outputs are cast back to ``q.dtype``.
When autograd is on, the inner gradients are built with ``create_graph=True`` so the outer loss
can be differentiated through them (gradients of gradients, as in TTT's outer loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.ops.ttt.common import TTTState, check_inputs, compute_dtype, inner_forward

__all__ = ["naive_ttt"]


def _ln(z: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    return F.layer_norm(z, z.shape[-1:], eps=eps) * weight + bias


def naive_ttt(
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
    """Per-token mini-batch TTT (TTT-Linear or TTT-MLP, picked by the state's weights).

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
    """
    check_inputs(q, k, v, eta, ln_weight, ln_bias, initial_state, mini_batch_size)
    cdt = compute_dtype(q)
    st = initial_state.to(cdt)
    W, anchor, off = st.weights, st.anchor, st.offset
    qs, ks, vs, es = (t.to(cdt) for t in (q, k, v, eta))
    lw, lb = ln_weight.to(cdt), ln_bias.to(cdt)
    outer = torch.is_grad_enabled()
    outs = []
    for t in range(q.shape[1]):
        if off == 0:
            anchor = W
        assert anchor is not None
        with torch.enable_grad():
            a = tuple(w if w.requires_grad else w.detach().requires_grad_() for w in anchor)
            z = inner_forward(a, ks[:, t])  # [B, H, F]
            loss = 0.5 * (_ln(z, lw, lb, eps) - (vs[:, t] - ks[:, t])).pow(2).sum()
            grads = torch.autograd.grad(loss, a, create_graph=outer)
        e = es[:, t]  # [B, H]
        W = tuple(w - e.view(*e.shape, *([1] * (w.ndim - 2))) * g for w, g in zip(W, grads))
        outs.append(qs[:, t] + _ln(inner_forward(W, qs[:, t]), lw, lb, eps))
        off = (off + 1) % mini_batch_size
    o = torch.stack(outs, dim=1) if outs else qs.new_zeros(qs.shape)
    return o.to(q.dtype), TTTState(W, anchor if off else None, off)
