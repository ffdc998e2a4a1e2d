"""Causal depthwise convolution over time with a carried tail (short convs of Titans and Hope)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["causal_depthwise_conv"]


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
