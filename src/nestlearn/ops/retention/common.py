"""Input checks and dtype policy shared by the retention ops.

Axis legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_retention_inputs", "compute_dtype"]


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


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
    if v.ndim != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"v must be [B, T, H, V] = [{B}, {T}, {H}, V], got {tuple(v.shape)}")
    if gamma.shape != (H,):
        raise ValueError(
            f"gamma must hold one decay per head, shape [{H}], got {tuple(gamma.shape)}"
        )
    if T == 0:
        raise ValueError("the sequence is empty (T = 0); pass at least one token")
    if initial_state is not None and initial_state.shape != (B, H, K, v.shape[-1]):
        raise ValueError(
            f"initial_state must be [B, H, K, V] = {(B, H, K, v.shape[-1])}, got "
            f"{tuple(initial_state.shape)}"
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(
            f"chunk_size must be a positive integer or None (auto), got {chunk_size}; try 64"
        )
