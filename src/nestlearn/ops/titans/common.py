"""State type, memory models and input checks shared by the Titans ops (naive and chunked).

Memory models (per sequence ``b`` and head ``h``; weights listed input side first):

* **linear** (one weight): ``M(x) = W_0 x`` with ``W_0: [Dv, Dk]``.
* **residual MLP** (``L >= 2`` weights): ``M(x) = x + W_{L-1} s(... s(W_1 s(W_0 x)))``, with
  ``W_0: [Dh, Dk]``, middle ``[Dh, Dh]``, ``W_{L-1}: [Dv, Dh]`` and ``Dv == Dk``. For ``L = 2`` this is
  Nested Learning eq. 89/91, ``M(x) = x + W1 s(W2 x)``, where the paper's input-side ``W2`` is our
  ``W_0``.

The memory type is read from ``len(state.weights)``: a residual 1-layer memory would just be a
linear memory whose weights are shifted by the identity, so it is not a separate case.

Inner objective (Titans eq. 12): ``l(M; k, v) = ||M(k) - v||^2`` (sum over the value axis, no 1/2).

Axis legend: B batch, T tokens, H heads, Dk key dim, Dv value dim, Dh memory hidden dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from nestlearn.ops import compiled
from nestlearn.ops.common import check_per_token, check_values, compute_dtype

__all__ = [
    "Activation",
    "Optimizer",
    "Read",
    "TitansState",
    "activation_fn",
    "activation_backward_fn",
    "check_inputs",
    "memory_forward",
    "start_state",
    "steady_titans_state",
    "zeros_state",
]

Activation = Literal["silu", "gelu", "relu"]
Optimizer = Literal["gd", "dgd"]
Read = Literal["after", "before"]


class TitansState(NamedTuple):
    """Per-sequence, per-head memory state of a Titans op.

    All tensors are ``[B, H, d_out, d_in]`` per memory layer and live in the op's compute dtype
    (float32, or float64 for float64 inputs).

    Attributes:
        weights: current memory weights ``M_t`` (one tensor for a linear memory, ``L >= 2`` for a
            residual MLP), input side first.
        momentum: momentum buffers ``S_t`` ("past surprise"), same shapes as ``weights``; ``None``
            when the op runs without momentum (``eta is None``).
        anchor: weights at the start of the current, unfinished chunk. Inner gradients for the rest
            of that chunk are taken at these weights. ``None`` when the state sits on a chunk
            boundary (``offset == 0``).
        offset: tokens of the current chunk already consumed, ``0 <= offset < chunk_size``. It lets
            a later call (e.g. token-by-token decode) continue the chunk exactly.
    """

    weights: tuple[Tensor, ...]
    momentum: tuple[Tensor, ...] | None = None
    anchor: tuple[Tensor, ...] | None = None
    offset: int = 0

    def detach(self) -> TitansState:
        """Cut the autograd history (truncated backprop through time); values are shared."""

        def _d(ts: tuple[Tensor, ...] | None) -> tuple[Tensor, ...] | None:
            return None if ts is None else tuple(t.detach() for t in ts)

        return TitansState(_d(self.weights), _d(self.momentum), _d(self.anchor), self.offset)  # type: ignore[arg-type]

    def to(self, dtype: torch.dtype) -> TitansState:
        """Cast every tensor to ``dtype`` (differentiable)."""

        def _c(ts: tuple[Tensor, ...] | None) -> tuple[Tensor, ...] | None:
            return None if ts is None else tuple(t.to(dtype) for t in ts)

        return TitansState(_c(self.weights), _c(self.momentum), _c(self.anchor), self.offset)  # type: ignore[arg-type]


def steady_titans_state(state: TitansState, requires_grad: bool) -> TitansState:
    """``state`` with every tensor passed through :func:`nestlearn.ops.compiled.steady`, so the
    first chunk's compiled step is the later chunks' graph (a no-op unless steps compile)."""

    def _s(ts: tuple[Tensor, ...] | None) -> tuple[Tensor, ...] | None:
        return None if ts is None else tuple(compiled.steady(t, requires_grad) for t in ts)

    return state._replace(weights=_s(state.weights), momentum=_s(state.momentum))


def zeros_state(
    batch: int,
    heads: int,
    shapes: list[tuple[int, int]],
    *,
    momentum: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> TitansState:
    """A state with all-zero weights (and momentum), on a chunk boundary.

    Args:
        batch, heads: ``B`` and ``H``.
        shapes: ``(d_out, d_in)`` per memory layer, input side first.
        momentum: allocate momentum buffers.
    """
    w = tuple(torch.zeros(batch, heads, o, i, dtype=dtype, device=device) for o, i in shapes)
    m = tuple(torch.zeros_like(t) for t in w) if momentum else None
    return TitansState(w, m, None, 0)


def activation_fn(name: Activation) -> Callable[[Tensor], Tensor]:
    """The memory MLP's nonlinearity ``s``."""
    if name == "silu":
        return torch.nn.functional.silu
    if name == "gelu":
        return torch.nn.functional.gelu  # exact (erf) GELU
    if name == "relu":
        return torch.relu
    raise ValueError(f"activation must be 'silu', 'gelu' or 'relu', got {name!r}")


class _ActBackward(torch.autograd.Function):
    """``g * s'(h)`` with a fused forward (aten's ``silu_backward`` / ``gelu_backward``).

    The chunked op calls this once per hidden layer per chunk (the backprop of the inner loss);
    composed from elementwise ops it is ~5 kernels forward and ~10 backward. Here it is 1 and 3.
    Twice differentiable is not needed: the outer loss is differentiated once.
    """

    @staticmethod
    def forward(ctx, g: Tensor, h: Tensor, name: str) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(g, h)
        ctx.name = name
        if name == "silu":
            return torch.ops.aten.silu_backward(g, h)
        return torch.ops.aten.gelu_backward(g, h)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        g, h = ctx.saved_tensors
        dg = dh = None
        if ctx.needs_input_grad[0]:
            dg = _ActBackward.apply(grad, h, ctx.name)
        if ctx.needs_input_grad[1]:
            dh = grad * g * _second_derivative(h, ctx.name)
        return dg, dh, None


def _second_derivative(h: Tensor, name: str) -> Tensor:
    """``s''(h)``: silu: ``sig (1 - sig) (2 + h (1 - 2 sig))``; gelu (erf): ``phi(h) (2 - h^2)``."""
    if name == "silu":
        sg = torch.sigmoid(h)
        return sg * (1.0 - sg) * (2.0 + h * (1.0 - 2.0 * sg))
    phi = torch.exp(-0.5 * h * h) * (1.0 / math.sqrt(2.0 * math.pi))
    return phi * (2.0 - h * h)


def activation_backward_fn(name: Activation) -> Callable[[Tensor, Tensor], Tensor]:
    """Hand-derived backprop through the nonlinearity: ``(g, h) -> g * s'(h)``.

    Differentiable (the outer loss backpropagates through the inner gradient).
    """
    if name in ("silu", "gelu"):
        return lambda g, h: _ActBackward.apply(g, h, name)
    if name == "relu":
        return lambda g, h: g * (h > 0).to(h.dtype)
    raise ValueError(f"activation must be 'silu', 'gelu' or 'relu', got {name!r}")


def memory_forward(
    weights: tuple[Tensor, ...] | list[Tensor], x: Tensor, activation: Activation
) -> Tensor:
    """Apply per-(sequence, head) memories to inputs.

    Args:
        weights: per layer ``[B, H, d_out, d_in]``, input side first.
        x: ``[B, H, Dk]`` or ``[B, H, N, Dk]``.

    Returns:
        ``M(x)``: ``[B, H, Dv]`` or ``[B, H, N, Dv]``.
    """
    single = x.dim() == 3
    z = x.unsqueeze(-2) if single else x  # [B, H, N, d]
    act = activation_fn(activation)
    h = z
    for i, w in enumerate(weights):
        h = h @ w.transpose(-1, -2)
        if i < len(weights) - 1:
            h = act(h)
    out = h if len(weights) == 1 else z + h
    return out.squeeze(-2) if single else out


def read_weights(state: TitansState, hidden_chunk: bool) -> tuple[Tensor, ...]:
    """The weights a read-only call uses: the state's weights, except that with ``hidden_chunk``
    a chunk under way (``offset > 0``) still reads its hidden layers at the chunk start (the
    anchor); their running weights hold the chunk's partial update, applied at its end."""
    if hidden_chunk and state.offset > 0 and state.anchor is not None:
        return (*state.anchor[:-1], state.weights[-1])
    return state.weights


def check_prior(
    prior: tuple[Tensor, ...] | None, hidden_chunk: bool, state: TitansState | None
) -> None:
    """``hidden_prior`` needs chunk-level hidden layers and must be shaped like the weights."""
    if prior is None:
        return
    if not hidden_chunk:
        raise ValueError("hidden_prior acts on chunk-level hidden layers; pass hidden_chunk=True")
    ws = None if state is None else state.weights
    if ws is None or len(ws) < 2:
        raise ValueError("hidden_prior needs an MLP memory (initial_state with >= 2 weights)")
    if len(prior) != len(ws) or any(p.shape != w.shape for p, w in zip(prior, ws)):
        raise ValueError(
            "hidden_prior must hold one tensor per memory layer, shaped like "
            f"initial_state.weights {[tuple(w.shape) for w in ws]}"
        )


def check_inputs(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    eta: Tensor | None,
    alpha: Tensor | None,
    initial_state: TitansState | None,
    chunk_size: int,
    optimizer: str,
    read: str = "after",
    self_target: bool = False,
) -> None:
    """Validate shapes and options; raises ``ValueError`` naming the bad value and the fix."""
    if (q is not None and q.dim() != 4) or k.dim() != 4 or v.dim() != 4:
        qs = None if q is None else tuple(q.shape)
        raise ValueError(
            f"q, k, v must be [B, T, H, D]; got {qs}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, T, H, Dk = k.shape
    if q is not None and q.shape != k.shape:
        raise ValueError(f"q must have k's shape {tuple(k.shape)}, got {tuple(q.shape)}")
    check_values(v, B, T, H, "Dv")
    check_per_token((B, T, H), theta=theta, eta=eta, alpha=alpha)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if optimizer not in ("gd", "dgd"):
        raise ValueError(f"optimizer must be 'gd' or 'dgd', got {optimizer!r}")
    if read not in ("after", "before"):
        raise ValueError(f"read must be 'after' (Titans) or 'before' (NL eq. 86), got {read!r}")
    if self_target and (initial_state is None or len(initial_state.weights) < 2):
        raise ValueError(
            "self_target=True needs a residual MLP memory (initial_state with >= 2 weights); "
            "a linear memory's self-generated value would make the update quadratic in M"
        )
    if initial_state is None:
        return
    ws = initial_state.weights
    if len(ws) == 0:
        raise ValueError("initial_state.weights is empty; give one tensor (linear) or >= 2 (MLP)")
    d_in = Dk
    for i, w in enumerate(ws):
        if w.dim() != 4 or w.shape[:2] != (B, H) or w.shape[-1] != d_in:
            raise ValueError(
                f"initial_state.weights[{i}] must be [B={B}, H={H}, d_out, d_in={d_in}], "
                f"got {tuple(w.shape)}"
            )
        d_in = w.shape[-2]
    if d_in != v.shape[-1]:
        raise ValueError(f"last memory layer outputs {d_in} features but v has Dv={v.shape[-1]}")
    if len(ws) > 1 and Dk != v.shape[-1]:
        raise ValueError(f"the residual MLP memory needs Dk == Dv, got Dk={Dk}, Dv={v.shape[-1]}")
    mom = initial_state.momentum
    if mom is not None:
        if eta is None:
            raise ValueError(
                "initial_state has momentum buffers but eta is None; pass eta or drop them"
            )
        if len(mom) != len(ws) or any(m.shape != w.shape for m, w in zip(mom, ws)):
            raise ValueError("initial_state.momentum must match initial_state.weights in shape")
    off = initial_state.offset
    if not 0 <= off < chunk_size:
        raise ValueError(
            f"initial_state.offset must be in [0, chunk_size={chunk_size}), got {off}; "
            "thread states only between calls with the same chunk_size"
        )
    if off > 0:
        anc = initial_state.anchor
        if anc is None or len(anc) != len(ws) or any(a.shape != w.shape for a, w in zip(anc, ws)):
            raise ValueError("initial_state.offset > 0 needs anchor weights shaped like weights")


def start_state(
    ins: tuple[Tensor | None, ...], initial_state: TitansState | None
) -> tuple[torch.dtype, list[Tensor | None], TitansState]:
    """The compute dtype, the inputs ``(q, k, v, theta, eta, alpha)`` cast to it, and the state a
    call starts from: ``initial_state`` cast (a zero linear memory when ``None``), with zero
    momentum buffers when ``eta`` is given and it has none."""
    k, v, eta = ins[1], ins[2], ins[4]
    assert k is not None and v is not None
    cdt = compute_dtype(k)
    B, T, H, Dk = k.shape
    if initial_state is None:
        initial_state = zeros_state(
            B, H, [(v.shape[-1], Dk)], momentum=False, dtype=cdt, device=k.device
        )
    state = initial_state.to(cdt)
    if eta is not None and state.momentum is None:
        state = state._replace(momentum=tuple(torch.zeros_like(w) for w in state.weights))
    return cdt, [None if t is None else t.to(cdt) for t in ins], state
