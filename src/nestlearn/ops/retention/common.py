"""Input checks shared by the retention ops.

The shape rules and the compute-dtype rule themselves are ``nestlearn.ops.common``'s.

Axis legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

from torch import Tensor

from nestlearn.ops.common import (
    check_chunk_size,
    check_keys,
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
    B, T, H, K = check_keys(q=q, k=k)
    check_values(v, B, T, H)
    if gamma.shape != (H,):
        raise ValueError(
            f"gamma must hold one decay per head, shape [{H}], got {tuple(gamma.shape)}"
        )
    check_not_empty(T)
    check_matrix_state(initial_state, B, H, K, v.shape[-1])
    check_chunk_size(chunk_size, hint=64)
