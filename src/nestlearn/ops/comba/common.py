"""Input checks shared by the naive and chunked Comba ops.

Inner math runs in float32 (float64 for float64 inputs); outputs are cast back to ``q.dtype`` and
the final state stays in the compute dtype.

Axis legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

from torch import Tensor

from nestlearn.ops.delta_rule.common import compute_dtype

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
    if q.ndim != 4 or k.shape != q.shape or p.shape != q.shape:
        raise ValueError(
            f"q, k and p must all be [B, T, H, K] with equal shapes, got {tuple(q.shape)}, "
            f"{tuple(k.shape)} and {tuple(p.shape)}"
        )
    B, T, H, K = q.shape
    if v.ndim != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"v must be [B, T, H, V] = [{B}, {T}, {H}, V], got {tuple(v.shape)}")
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, H):
            raise ValueError(f"{name} must be [B, T, H] = {(B, T, H)}, got {tuple(x.shape)}")
    if T == 0:
        raise ValueError("the sequence is empty (T = 0); pass at least one token")
    if initial_state is not None and initial_state.shape != (B, H, K, v.shape[-1]):
        raise ValueError(
            f"initial_state must be [B, H, K, V] = {(B, H, K, v.shape[-1])}, got "
            f"{tuple(initial_state.shape)}"
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}; try 64")
