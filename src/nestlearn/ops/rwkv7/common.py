"""Input checks and dtype policy shared by the naive and chunked RWKV-7 (DPLR delta rule) ops.

Inner math runs in float32 (float64 for float64 inputs); outputs are cast back to ``r.dtype`` and
the final state stays in the compute dtype.

Axis legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_dplr_inputs", "compute_dtype"]


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


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
    if v.ndim != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"v must be [B, T, H, V] = [{B}, {T}, {H}, V], got {tuple(v.shape)}")
    if T == 0:
        raise ValueError("the sequence is empty (T = 0); pass at least one token")
    if initial_state is not None and initial_state.shape != (B, H, K, v.shape[-1]):
        raise ValueError(
            f"initial_state must be [B, H, K, V] = {(B, H, K, v.shape[-1])}, got "
            f"{tuple(initial_state.shape)}"
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}; try 16")
