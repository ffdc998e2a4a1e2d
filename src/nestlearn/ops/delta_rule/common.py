"""Input checks and dtype policy shared by the naive and chunked delta-rule ops.

Inner math runs in float32 (float64 when the inputs are float64); outputs are cast back to the
input dtype and the final state stays in the compute dtype, so a state threaded from call to call
never loses precision to bfloat16 activations.

Axis legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_delta_inputs", "compute_dtype"]


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else (float32, bfloat16, float16)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


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
    if q.ndim != 4 or k.shape != q.shape:
        raise ValueError(
            f"q and k must both be [B, T, H, K] with equal shapes, got {tuple(q.shape)} and "
            f"{tuple(k.shape)}"
        )
    B, T, H, K = q.shape
    if v.ndim != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"v must be [B, T, H, V] = [{B}, {T}, {H}, V], got {tuple(v.shape)}")
    if beta.shape != (B, T, H):
        raise ValueError(f"beta must be [B, T, H] = {(B, T, H)}, got {tuple(beta.shape)}")
    if g is not None and g.shape != (B, T, H):
        raise ValueError(f"g must be [B, T, H] = {(B, T, H)}, got {tuple(g.shape)}")
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
