"""Input checks shared by the retention ops.

The shape rules and the compute-dtype rule themselves are ``nestlearn.ops.common``'s.

Axis legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

from torch import Tensor

from nestlearn.ops.common import (
    check_chunk_size,
    check_matrix_state,
    check_not_empty,
    check_values,
    compute_dtype,
)

__all__ = ["check_retention_inputs", "compute_dtype"]


def check_retention_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gamma: Tensor,
    initial_state: Tensor | None,
    chunk_size: int | None,
) -> None:
    """Raise ``ValueError`` naming the bad shape and the expected one."""
    if q.ndim != 4 or k.shape != q.shape:
        raise ValueError(
            f"q and k must both be [B, T, H, K] with equal shapes, got {tuple(q.shape)} and "
            f"{tuple(k.shape)}"
        )
    B, T, H, K = q.shape
    check_values(v, B, T, H)
    if gamma.shape != (H,):
        raise ValueError(
            f"gamma must hold one decay per head, shape [{H}], got {tuple(gamma.shape)}"
        )
    check_not_empty(T)
    check_matrix_state(initial_state, B, H, K, v.shape[-1])
    check_chunk_size(chunk_size, hint=64)
