"""Input checks shared by the naive and chunked RWKV-7 (DPLR delta rule) ops.

The shape rules and the compute-dtype rule themselves are ``nestlearn.ops.common``'s.

Inner math runs in float32 (float64 for float64 inputs); outputs are cast back to ``r.dtype`` and
the final state stays in the compute dtype.

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

__all__ = ["check_dplr_inputs", "compute_dtype"]


def check_dplr_inputs(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    initial_state: Tensor | None,
    chunk_size: int | None,
) -> None:
    """Raise ``ValueError`` naming the bad shape and the expected one."""
    if r.ndim != 4:
        raise ValueError(f"r must be [B, T, H, K], got {tuple(r.shape)}")
    B, T, H, K = r.shape
    for name, x in (("w", w), ("k", k), ("a", a), ("b", b)):
        if x.shape != r.shape:
            raise ValueError(f"{name} must have r's shape [B, T, H, K] = {tuple(r.shape)}, "
                             f"got {tuple(x.shape)}")  # fmt: skip
    check_values(v, B, T, H)
    check_not_empty(T)
    check_matrix_state(initial_state, B, H, K, v.shape[-1])
    check_chunk_size(chunk_size, hint=16)
