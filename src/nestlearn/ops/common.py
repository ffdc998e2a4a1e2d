"""What every op family shares, written once: the compute dtype, chunk padding, input checks.

- **Compute dtype** (STYLE example 9): inner math (scans, memory gradients, CMS updates) runs in
  float32, or in float64 when the inputs are float64 so that the equivalence tests can compare
  fast and naive ops to rounding; outputs are cast back to the input dtype. The rule is
  :func:`nestlearn.utils.dtypes.compute_dtype` (the optimizers use it too), re-exported here.
- **Chunking**: pad the time axis to a whole number of chunks, lay a tensor out heads-first for
  batched per-chunk matmuls, shift a per-chunk sequence right by one.
- **Input checks**: the shape rules the linear-recurrence ops (delta rule, retention, Comba,
  RWKV-7, SSD, TTT, Titans, nested memories) share, with one wording for each message.
- **The short causal convolution with a carried tail**: :func:`causal_depthwise_conv`, defined
  in ``ops/conv.py`` and re-exported here.

Axis legend: B batch, T tokens, H heads, K key dim, V value dim, C tokens per chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.ops.conv import causal_depthwise_conv
from nestlearn.utils.dtypes import compute_dtype

__all__ = [
    "causal_depthwise_conv",
    "check_chunk_size",
    "check_keys",
    "check_matrix_state",
    "check_not_empty",
    "check_per_token",
    "check_values",
    "compute_dtype",
    "heads_first",
    "matrix_state",
    "pad_axis",
    "per_chunk",
    "shift_right",
]


# ----------------------------------------------------------------------------- chunking
def pad_axis(x: Tensor, length: int, dim: int = 1, value: float = 0.0) -> Tensor:
    """``x`` with axis ``dim`` padded at its end with ``value`` up to ``length`` entries.

    ``x`` itself when the axis is already that long (no copy). The usual use is the time axis
    of ``[B, T, H, *rest]`` (``dim=1``) padded to a whole number of chunks; the fill is chosen so
    that a padded token changes no state (a zero input, a decay of one).
    """
    dim = dim % x.ndim
    pad = length - x.shape[dim]
    if pad <= 0:
        return x
    # F.pad lists (left, right) pairs from the last axis backwards
    return F.pad(x, (0, 0) * (x.ndim - 1 - dim) + (0, pad), value=value)


def heads_first(x: Tensor, length: int, dtype: torch.dtype) -> Tensor:
    """``[B, T, H, *rest]`` -> contiguous ``[B, H, length, *rest]`` in ``dtype``, zero-padded.

    One copy up front, so every per-chunk slice of it is a plain strided batch for ``bmm``.
    """
    return pad_axis(x.to(dtype).transpose(1, 2), length, dim=2).contiguous()


def per_chunk(x: Tensor, n_chunks: int) -> list[Tensor]:
    """Heads-first ``[B, H, N, ...]`` -> ``N`` tensors ``[B * H, ...]``, one bmm batch per chunk
    (views; unbinding once keeps backward ``O(N)``, where slicing in the loop would not)."""
    return list(x.reshape(x.shape[0] * x.shape[1], n_chunks, *x.shape[3:]).unbind(1))


def matrix_state(
    initial_state: Tensor | None, shape: tuple[int, int, int, int], dtype: torch.dtype, like: Tensor
) -> Tensor:
    """The ``[B, H, K, V]`` state a linear recurrence starts from, in the compute ``dtype``:
    ``initial_state`` cast, or zeros on ``like``'s device when it is ``None``."""
    if initial_state is None:
        return torch.zeros(shape, dtype=dtype, device=like.device)
    return initial_state.to(dtype)


def shift_right(x: Tensor, dim: int, fill: float) -> Tensor:
    """``x`` moved one step along ``dim`` (position ``i`` takes ``i - 1``), ``fill`` at 0.

    The last entry drops off: per-chunk values "as of the previous token".
    """
    dim = dim % x.ndim
    kept = x.narrow(dim, 0, x.shape[dim] - 1)
    return F.pad(kept, (0, 0) * (x.ndim - 1 - dim) + (1, 0), value=fill)


# ----------------------------------------------------------------------------- input checks
def check_keys(**tensors: Tensor) -> tuple[int, int, int, int]:
    """The named tensors (queries, keys, ...) are ``[B, T, H, K]`` with one shape; returns it."""
    names, ts = list(tensors), list(tensors.values())
    if ts[0].ndim != 4 or any(t.shape != ts[0].shape for t in ts[1:]):
        listed = ", ".join(names[:-1]) + " and " + names[-1]
        shapes = ", ".join(str(tuple(t.shape)) for t in ts[:-1]) + f" and {tuple(ts[-1].shape)}"
        both = "both" if len(ts) == 2 else "all"
        raise ValueError(f"{listed} must {both} be [B, T, H, K] with equal shapes, got {shapes}")
    B, T, H, K = ts[0].shape
    return B, T, H, K


def check_values(v: Tensor, B: int, T: int, H: int, dim: str = "V") -> None:
    """``v`` is ``[B, T, H, <dim>]``; ``ValueError`` with the expected shape otherwise."""
    if v.ndim != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(
            f"v must be [B, T, H, {dim}] = [{B}, {T}, {H}, {dim}], got {tuple(v.shape)}"
        )


def check_per_token(shape: tuple[int, int, int], **gates: Tensor | None) -> None:
    """Every gate given (not ``None``) is ``[B, T, H]`` = ``shape``, one value per token and head."""
    for name, g in gates.items():
        if g is not None and g.shape != shape:
            raise ValueError(f"{name} must be [B, T, H] = {shape}, got {tuple(g.shape)}")


def check_not_empty(T: int) -> None:
    """The sequence has at least one token."""
    if T == 0:
        raise ValueError("the sequence is empty (T = 0); pass at least one token")


def check_matrix_state(initial_state: Tensor | None, B: int, H: int, K: int, V: int) -> None:
    """A linear recurrence's state is ``[B, H, K, V]`` (or ``None``: zeros)."""
    if initial_state is not None and initial_state.shape != (B, H, K, V):
        raise ValueError(
            f"initial_state must be [B, H, K, V] = {(B, H, K, V)}, got {tuple(initial_state.shape)}"
        )


def check_chunk_size(chunk_size: int | None, hint: int) -> None:
    """``chunk_size`` is a positive integer, or ``None`` for the op's automatic choice."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(
            f"chunk_size must be a positive integer or None (auto), got {chunk_size}; try {hint}"
        )
