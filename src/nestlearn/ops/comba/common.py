"""Input checks shared by the naive and chunked Comba ops.

Inner math runs in float32 (float64 for float64 inputs); outputs are cast back to ``q.dtype`` and
the final state stays in the compute dtype.

Axis legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

from torch import Tensor

from nestlearn.ops.common import (
    check_chunk_size,
    check_keys,
    check_matrix_state,
    check_not_empty,
    check_per_token,
    check_values,
    compute_dtype,
)

__all__ = ["check_comba_inputs", "compute_dtype"]


def check_comba_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None,
    chunk_size: int | None,
) -> None:
    """Raise ``ValueError`` naming the bad shape and the expected one."""
    B, T, H, K = check_keys(q=q, k=k, p=p)
    check_values(v, B, T, H)
    check_per_token((B, T, H), g=g, beta=beta)
    check_not_empty(T)
    check_matrix_state(initial_state, B, H, K, v.shape[-1])
    check_chunk_size(chunk_size, hint=64)
