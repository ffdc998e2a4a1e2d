"""Rotary position embeddings (Su et al. 2021).

Axis legend: B batch, T time, H heads, D head dim.

Two pairings of the head dimension exist in the wild: ``half`` (GPT-NeoX / Llama in HF
format: dims ``i`` and ``i + D/2`` rotate together) and ``interleaved`` (the original
Meta layout and GGUF: dims ``2i`` and ``2i + 1``). Both are exact rotations; which one a
checkpoint needs depends on how its Q/K weights were permuted.
"""

from __future__ import annotations

import torch


def rope_frequencies(
    head_dim: int, base: float, device: torch.device | None = None
) -> torch.Tensor:
    """Inverse frequencies ``base^(-2i/D)``, shape ``[D/2]``, float32."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    return 1.0 / (
        base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    )


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for integer ``positions: [T]`` -> two ``[T, D/2]`` float32 tensors."""
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False
) -> torch.Tensor:
    """Rotate ``x: [B, T, H, D]`` by the angles in ``cos, sin: [T, D/2]``; float32 math."""
    xf = x.float()
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    if interleaved:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        out = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        half = xf.shape[-1] // 2
        x1, x2 = xf[..., :half], xf[..., half:]
        out = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return out.to(x.dtype)
