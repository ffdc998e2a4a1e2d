"""Causal depthwise convolution over time with a carried tail: the short convs of Titans and Hope
(:func:`causal_depthwise_conv`) and of Mamba2 / DeltaNet / Comba (:func:`short_conv_silu`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_depthwise_conv", "short_conv_silu"]


def causal_depthwise_conv(u: Tensor, weight: Tensor, tail: Tensor | None) -> tuple[Tensor, Tensor]:
    """``out_t = sum_j weight[j] * u_{t - K + 1 + j}`` per channel, zeros (or ``tail``) before 0.

    Args:
        u: ``[B, T, P]`` inputs.
        weight: ``[K, P]`` taps, oldest first (``weight[K - 1]`` multiplies the current token).
        tail: ``[B, K - 1, P]`` the last ``K - 1`` inputs of the previous call, or ``None``.

    Returns:
        ``(out [B, T, P], new_tail [B, K - 1, P])``; threading ``new_tail`` into the next call
        equals one call over the concatenated inputs.
    """
    w = weight.to(u.dtype)
    K = w.shape[0]
    if tail is None:
        tail = u.new_zeros(u.shape[0], K - 1, u.shape[-1])
    full = u if K == 1 else torch.cat([tail.to(u.dtype), u], dim=1)
    T = u.shape[1]
    # a sum of K shifted products: cheaper on CPU than conv1d's [B, P, T] layout round trip
    out = full[:, K - 1 :] * w[K - 1]
    for j in range(K - 1):
        out = out + full[:, j : j + T] * w[j]
    return out, full[:, full.shape[1] - (K - 1) :]


def short_conv_silu(
    x: Tensor, weight: Tensor, tail: Tensor | None, bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``silu(conv1d(x))``: depthwise causal conv over time by ``F.conv1d``, then SiLU (the Mamba2
    / DeltaNet "short conv").

    Args:
        x: ``[B, T, C]`` inputs.
        weight: ``[C, W]`` or ``[C, 1, W]`` taps, oldest first; cast to ``x.dtype``.
        tail: ``[B, W - 1, C]`` the inputs preceding ``x``, or ``None`` (zeros: a fresh sequence).
        bias: ``[C]`` or ``None``.

    Returns:
        ``(y [B, T, C], new_tail [B, W - 1, C])``; threading ``new_tail`` into the next call
        equals one call over the concatenated inputs.
    """
    C, W = x.shape[-1], weight.shape[-1]
    if tail is None:
        tail = x.new_zeros(x.shape[0], W - 1, C)
    full = torch.cat([tail.to(x.dtype), x], dim=1)  # [B, W - 1 + T, C]
    out = F.conv1d(
        full.transpose(1, 2),
        weight.to(x.dtype).view(C, 1, W),
        None if bias is None else bias.to(x.dtype),
        groups=C,
    ).transpose(1, 2)  # [B, T, C]
    return F.silu(out), full[:, full.shape[1] - (W - 1) :]
