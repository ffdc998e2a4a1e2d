"""Run a :class:`MemorySpec` on the dedicated op that covers it, else on the generic chunked form.

=========================== ======================================================================
dedicated op                specs it runs (everything else goes to ``chunk_nested``)
=========================== ======================================================================
``chunk_titans``            matrix (no residual) or residual mlp, no bias, no norm; ``l2``, scale 1;
                            retention ``none`` / ``l2``; ``gd`` / ``dgd``, momentum or not; read
                            ``after`` / ``before``; target ``value`` / ``self``. Titans (LMM) and
                            Hope's ``M_memory`` (the main-memory pass of ``chunk_selfmod_titans``).
``chunk_delta_rule``        matrix, no bias/norm/residual; ``l2`` with scale 1/2; no retention;
                            ``gd``, no momentum; read ``after``; ``chunk_size=1`` (the exact per-token
                            rule, which the WY form computes at any internal chunk size). DeltaNet.
``chunk_ttt``               matrix or 2-layer ``gelu_tanh`` mlp with biases, LayerNorm and residual;
                            ``l2`` with scale 1/2; no retention; ``gd``; read ``after``. TTT-Linear /
                            TTT-MLP (mini-batch = ``chunk_size``).
=========================== ======================================================================

Each mapping is exact (the tests compare every instance against the generic form in float64,
forward and backward). ``spec.options`` are passed to the dedicated op as keyword arguments, so an
option a dedicated op gains later is usable without touching this module; the generic path refuses
them. The state is always a :class:`NestedState`, converted at this boundary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nestlearn.ops.common import compute_dtype
from nestlearn.ops.delta_rule import chunk_delta_rule
from nestlearn.ops.nested.chunk import chunk_nested
from nestlearn.ops.nested.common import NestedState, check_nested_inputs, zeros_state
from nestlearn.ops.nested.naive import naive_nested
from nestlearn.ops.nested.spec import MemorySpec
from nestlearn.ops.titans import TitansState, chunk_titans
from nestlearn.ops.ttt import TTTState, chunk_ttt

__all__ = ["BACKENDS", "dedicated_op", "nested_memory"]

BACKENDS = ("auto", "dedicated", "generic", "naive")


def dedicated_op(spec: MemorySpec) -> str | None:
    """``"titans"``, ``"delta_rule"``, ``"ttt"`` or ``None`` (generic) for a spec."""
    plain = not spec.bias and spec.norm == "none" and spec.target == "value"
    if (
        spec.memory in ("matrix", "mlp")
        and not spec.bias
        and spec.norm == "none"
        and spec.is_residual == (spec.memory == "mlp")
        and spec.objective == "l2"
        and spec.scale == 1.0
        and spec.retention in ("none", "l2")
        and spec.algorithm in ("gd", "dgd")
        and spec.read in ("after", "before")
        and spec.activation in ("silu", "gelu", "relu")
    ):
        return "titans"
    # one plain gradient step on ||M(k) - v||^2 / 2 per token, read after it: delta rule and TTT
    plain_gd = (
        spec.objective == "l2"
        and spec.scale == 0.5
        and spec.retention == "none"
        and spec.algorithm == "gd"
        and not spec.momentum
        and spec.read == "after"
    )
    delta = spec.memory == "matrix" and plain and plain_gd and not spec.is_residual
    if delta and spec.chunk_size == 1:
        return "delta_rule"
    ttt_mem = spec.memory == "matrix" or (
        spec.memory == "mlp" and spec.n_layers == 2 and spec.activation == "gelu_tanh"
    )
    ttt_layout = spec.bias and spec.norm == "layernorm" and spec.is_residual
    if ttt_mem and ttt_layout and spec.target == "value" and plain_gd:
        return "ttt"
    return None


def nested_memory(
    spec: MemorySpec,
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    retain: Tensor | None = None,
    momentum: Tensor | None = None,
    delta: Tensor | None = None,
    state: NestedState | None = None,
    *,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor | None, NestedState]:
    """One memory level over a sequence: the spec's update rule, read with ``q``.

    Args:
        spec, q, k, v, lr, retain, momentum, delta, state, norm_weight, norm_bias: as
            :func:`nestlearn.ops.nested.naive.naive_nested` (shapes ``[B, T, H, D]`` / ``[B, T, H]``).
        backend: ``auto`` (the dedicated op when one covers the spec, else the generic chunked
            form), ``dedicated`` (raise when none does), ``generic`` (``chunk_nested``) or
            ``naive`` (the per-token reference loop).

    Returns:
        ``(y [B, T, H, Dv] or None, final_state)``, the same whatever the backend (up to rounding).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    args = (spec, q, k, v, lr, retain, momentum, delta, state)
    kw: dict[str, Any] = {"norm_weight": norm_weight, "norm_bias": norm_bias}
    if backend == "naive":
        return naive_nested(*args, **kw)
    if backend == "generic":
        return chunk_nested(*args, **kw)
    op = dedicated_op(spec)
    if op is None:
        if backend == "dedicated":
            raise ValueError(
                f"no dedicated op runs {spec.describe()}; use backend='auto' or 'generic'"
            )
        return chunk_nested(*args, **kw)
    check_nested_inputs(*args, norm_weight, norm_bias)
    B, T, H, Dk = k.shape
    if state is None:
        cdt = compute_dtype(k)
        state = zeros_state(spec, B, H, Dk, v.shape[-1], dtype=cdt, device=k.device)
    if op == "titans":
        return _titans(spec, q, k, v, lr, retain, momentum, state)
    if op == "delta_rule":
        return _delta_rule(spec, q, k, v, lr, state)
    return _ttt(spec, q, k, v, lr, state, norm_weight, norm_bias)


def _titans(
    spec: MemorySpec,
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    retain: Tensor | None,
    momentum: Tensor | None,
    state: NestedState,
) -> tuple[Tensor | None, NestedState]:
    ts = TitansState(state.params, state.momentum, state.anchor, state.offset)
    y, out = chunk_titans(
        q, k, v, lr, momentum, None if retain is None else 1.0 - retain, ts,
        chunk_size=spec.chunk_size, activation=spec.activation,  # type: ignore[arg-type]
        optimizer=spec.algorithm,  # type: ignore[arg-type]
        read=spec.read,  # type: ignore[arg-type]
        self_target=spec.target == "self", **spec.options,
    )  # fmt: skip
    return y, NestedState(out.weights, None, out.momentum, out.anchor, out.offset)


def _delta_rule(
    spec: MemorySpec, q: Tensor | None, k: Tensor, v: Tensor, lr: Tensor, state: NestedState
) -> tuple[Tensor | None, NestedState]:
    # our W: [Dv, Dk] maps keys to values by W k; the delta rule's S: [K, V] by S^T k
    y, S = chunk_delta_rule(
        k if q is None else q, k, v, lr, state.params[0].mT, scale=1.0, **spec.options
    )
    return (None if q is None else y), NestedState((S.mT,))


def _ttt(
    spec: MemorySpec,
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: NestedState,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
) -> tuple[Tensor | None, NestedState]:
    H, Dv = k.shape[2], v.shape[-1]
    lw = (
        norm_weight
        if norm_weight is not None
        else torch.ones(H, Dv, dtype=v.dtype, device=v.device)
    )
    lb = norm_bias if norm_bias is not None else torch.zeros(H, Dv, dtype=v.dtype, device=v.device)

    def to_ttt(ps: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        # ours: (W_0, ..., b_0, ...), W_l [o, i] column convention; TTT: (W1, b1, W2, b2) row-vector
        L = len(ps) // 2
        return tuple(x for li in range(L) for x in (ps[li].mT, ps[L + li]))

    def from_ttt(ps: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        L = len(ps) // 2
        return tuple(ps[2 * li].mT for li in range(L)) + tuple(ps[2 * li + 1] for li in range(L))

    anchor = None if state.anchor is None else to_ttt(state.anchor)
    ts = TTTState(to_ttt(state.params), anchor, state.offset)
    y, out = chunk_ttt(
        k if q is None else q, k, v, lr, lw, lb, ts, mini_batch_size=spec.chunk_size,
        eps=spec.norm_eps, **spec.options,
    )  # fmt: skip
    anc = None if out.anchor is None else from_ttt(out.anchor)
    return (None if q is None else y), NestedState(
        from_ttt(out.weights), None, None, anc, out.offset
    )
