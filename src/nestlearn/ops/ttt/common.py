"""State type, inner models and input checks shared by the TTT ops (naive and chunked).

TTT layers (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden
States") keep, per sequence and head, the weights ``W`` of a small inner model ``f`` and train
them on the sequence itself, one self-supervised gradient step per token (or per mini-batch).

Inner models (row-vector convention ``z = x W + b`` as in the official code; per head):

* **TTT-Linear** (2 weights): ``f(x) = x W1 + b1`` with ``W1: [F, F]``, ``b1: [F]``.
* **TTT-MLP** (4 weights): ``f(x) = gelu(x W1 + b1) W2 + b2`` with ``W1: [F, Fh]``, ``b1: [Fh]``,
  ``W2: [Fh, F]``, ``b2: [F]`` (``Fh = 4 F`` in the paper), GELU in its tanh form (as the
  official implementation).

The model is read from ``len(state.weights)``. Both are used with a residual and a per-head
LayerNorm ``LN(z) = gamma * (z - mean) / sqrt(var + eps) + beta`` (paper section 2.7):

    inner loss    l(W; k, v) = 1/2 || LN(f_W(k)) - (v - k) ||^2       (reconstruction of v from k)
    output        o_t = q_t + LN(f_{W_t}(q_t))                         (read after token t's step)

Axis legend: B batch, T tokens, H heads, F head dim, Fh MLP hidden dim.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.ops.common import check_per_token, compute_dtype

__all__ = [
    "TTTState",
    "check_inputs",
    "compute_dtype",
    "gelu_tanh_grad",
    "inner_forward",
    "ln_l2_grad",
]


class TTTState(NamedTuple):
    """Per-sequence, per-head inner-model state of a TTT op.

    All tensors are ``[B, H, ...]`` and live in the op's compute dtype (float32, or float64 for
    float64 inputs) once returned by an op.

    Attributes:
        weights: current inner weights ``W_t``: ``(W1, b1)`` for TTT-Linear,
            ``(W1, b1, W2, b2)`` for TTT-MLP (shapes in the module docstring, ``[B, H]`` first).
        anchor: weights at the start of the current, unfinished mini-batch; the rest of that
            mini-batch takes its inner gradients there. ``None`` on a mini-batch boundary.
            (Keeping the anchor is equivalent to keeping the pending tokens of the partial
            mini-batch: their gradient steps are already folded into ``weights``.)
        offset: tokens of the current mini-batch already consumed, ``0 <= offset < b``; also the
            position of the next token inside its mini-batch.
    """

    weights: tuple[Tensor, ...]
    anchor: tuple[Tensor, ...] | None = None
    offset: int = 0

    def detach(self) -> TTTState:
        """Cut the autograd history (truncated backprop through time); values are shared."""
        anchor = None if self.anchor is None else tuple(t.detach() for t in self.anchor)
        return TTTState(tuple(t.detach() for t in self.weights), anchor, self.offset)

    def to(self, dtype: torch.dtype) -> TTTState:
        """Cast every tensor to ``dtype`` (differentiable)."""
        anchor = None if self.anchor is None else tuple(t.to(dtype) for t in self.anchor)
        return TTTState(tuple(t.to(dtype) for t in self.weights), anchor, self.offset)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_tanh_grad(x: Tensor) -> Tensor:
    """Derivative of ``F.gelu(x, approximate="tanh")``."""
    u = _SQRT_2_OVER_PI * (x + 0.044715 * x.pow(3))
    th = torch.tanh(u)
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * _SQRT_2_OVER_PI * (
        1.0 + 3.0 * 0.044715 * x * x
    )


def inner_forward(weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """``f_W(x)`` for ``x: [..., F]`` and weights broadcastable as ``[..., F, Fo]`` / ``[..., Fo]``."""
    if len(weights) == 2:
        W1, b1 = weights
        return (x.unsqueeze(-2) @ W1).squeeze(-2) + b1
    W1, b1, W2, b2 = weights
    h = F.gelu((x.unsqueeze(-2) @ W1).squeeze(-2) + b1, approximate="tanh")
    return (h.unsqueeze(-2) @ W2).squeeze(-2) + b2


def layer_norm(z: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Per-head LayerNorm over the last axis with affine ``weight, bias`` broadcast against ``z``."""
    mu = z.mean(-1, keepdim=True)
    zc = z - mu
    var = zc.pow(2).mean(-1, keepdim=True)
    return zc * torch.rsqrt(var + eps) * weight + bias


def ln_l2_grad(z: Tensor, target: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """``d/dz 1/2 ||LN(z) - target||^2`` in closed form (LayerNorm's backward), per row.

    Args:
        z: ``[..., F]`` inner-model outputs; target: same shape; weight, bias: broadcastable.

    Returns:
        ``[..., F]``: ``rstd * (g - mean(g) - zhat * mean(g * zhat))`` with
        ``g = (LN(z) - target) * weight``.
    """
    mu = z.mean(-1, keepdim=True)
    zc = z - mu
    rstd = torch.rsqrt(zc.pow(2).mean(-1, keepdim=True) + eps)
    zhat = zc * rstd
    g = (zhat * weight + bias - target) * weight
    return rstd * (g - g.mean(-1, keepdim=True) - zhat * (g * zhat).mean(-1, keepdim=True))


def check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    initial_state: TTTState,
    mini_batch_size: int,
) -> None:
    """Raise ``ValueError`` naming the bad argument and the expected shape."""
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must all be [B, T, H, F], got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    b, t, h, f = q.shape
    check_per_token((b, t, h), eta=eta)
    if ln_weight.shape != (h, f) or ln_bias.shape != (h, f):
        raise ValueError(
            f"ln_weight and ln_bias must be [H, F] = {(h, f)}, got {tuple(ln_weight.shape)} "
            f"and {tuple(ln_bias.shape)}"
        )
    if not (isinstance(mini_batch_size, int) and mini_batch_size >= 1):
        raise ValueError(f"mini_batch_size must be a positive int, got {mini_batch_size!r}; try 16")
    if not isinstance(initial_state, TTTState):
        raise ValueError(
            f"initial_state must be a TTTState (the inner model's starting weights), got "
            f"{type(initial_state).__name__}"
        )
    w = initial_state.weights
    if len(w) == 2:
        shapes = [(b, h, f, f), (b, h, f)]
    elif len(w) == 4:
        fh = w[0].shape[-1]
        shapes = [(b, h, f, fh), (b, h, fh), (b, h, fh, f), (b, h, f)]
    else:
        raise ValueError(
            f"initial_state.weights must be (W1, b1) for TTT-Linear or (W1, b1, W2, b2) for "
            f"TTT-MLP, got {len(w)} tensors"
        )
    for i, (x, s) in enumerate(zip(w, shapes)):
        if tuple(x.shape) != s:
            raise ValueError(f"initial_state.weights[{i}] must be {s}, got {tuple(x.shape)}")
    off = initial_state.offset
    if not 0 <= off < mini_batch_size:
        raise ValueError(
            f"initial_state.offset={off} must be in [0, mini_batch_size={mini_batch_size}); "
            "thread states only between calls with the same mini_batch_size"
        )
    if (off > 0) != (initial_state.anchor is not None):
        raise ValueError(
            f"initial_state.anchor must be given exactly when offset > 0 (offset={off}, "
            f"anchor {'given' if initial_state.anchor is not None else 'None'})"
        )
