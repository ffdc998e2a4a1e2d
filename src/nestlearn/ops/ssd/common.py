"""Input checks shared by the SSD ops (naive and chunked).

The shape rules and the compute-dtype rule themselves are ``nestlearn.ops.common``'s.

Axis legend: B batch, T tokens, H heads, P head dim (channels per head), G groups of heads that
share ``B``/``C`` (Mamba2's ``ngroups``), N state size (``d_state``).
"""

from __future__ import annotations

from torch import Tensor

from nestlearn.ops.common import check_per_token, compute_dtype

__all__ = ["check_inputs", "compute_dtype", "expand_groups"]


def expand_groups(t: Tensor, heads: int) -> Tensor:
    """``[B, T, G, N] -> [B, T, H, N]``: head ``h`` reads group ``h // (H // G)`` (as mamba_ssm)."""
    G = t.shape[2]
    return t if G == heads else t.repeat_interleave(heads // G, dim=2)


def check_inputs(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    initial_state: Tensor | None,
    chunk_size: int,
) -> None:
    """Raise ``ValueError`` naming the bad argument and the expected shape."""
    if x.ndim != 4:
        raise ValueError(f"x must be [B, T, H, P], got shape {tuple(x.shape)}")
    b, t, h, p = x.shape
    check_per_token((b, t, h), dt=dt)
    if A.shape != (h,):
        raise ValueError(f"A must be [H] = ({h},), got {tuple(A.shape)}")
    if B.ndim != 4 or B.shape[:2] != (b, t) or B.shape != C.shape:
        raise ValueError(
            f"B and C must both be [B, T, G, N] with B, T = {(b, t)}, got B {tuple(B.shape)} "
            f"and C {tuple(C.shape)}"
        )
    g, n = B.shape[2], B.shape[3]
    if h % g:
        raise ValueError(f"heads H={h} must be a multiple of the groups G={g} of B and C")
    if D is not None and D.shape != (h,):
        raise ValueError(f"D must be [H] = ({h},) or None, got {tuple(D.shape)}")
    if initial_state is not None and initial_state.shape != (b, h, p, n):
        raise ValueError(
            f"initial_state must be [B, H, P, N] = {(b, h, p, n)}, got {tuple(initial_state.shape)}"
        )
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}; try 64")
