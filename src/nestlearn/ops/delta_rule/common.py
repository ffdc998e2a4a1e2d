"""Input checks shared by the naive and chunked delta-rule ops.

The shape rules and the compute-dtype rule themselves are ``nestlearn.ops.common``'s.

Inner math runs in float32 (float64 when the inputs are float64); outputs are cast back to the
input dtype and the final state stays in the compute dtype, so a state threaded from call to call
never loses precision to bfloat16 activations.

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

__all__ = ["check_delta_inputs", "compute_dtype"]


def check_delta_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None,
    initial_state: Tensor | None,
    chunk_size: int | None,
) -> None:
    """Raise ``ValueError`` naming the bad shape and the expected one."""
    B, T, H, K = check_keys(q=q, k=k)
    check_values(v, B, T, H)
    check_per_token((B, T, H), beta=beta, g=g)
    check_not_empty(T)
    check_matrix_state(initial_state, B, H, K, v.shape[-1])
    check_chunk_size(chunk_size, hint=64)
