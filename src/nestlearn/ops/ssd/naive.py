"""Reference (slow, obviously correct) Mamba2 SSD recurrence: the spec for ``chunk.py``.

Per head ``h`` the state ``S_t: [P, N]`` follows the selective state-space recurrence of Mamba2
(Dao & Gu 2024, "Transformers are SSMs", eq. for the SSD layer with scalar-times-identity ``A``):

    a_t = exp(dt_t * A)                          scalar decay per head and token (A < 0, dt > 0)
    S_t = a_t S_{t-1} + dt_t x_t B_t^T           x_t: [P], B_t: [N]
    y_t = S_t C_t + D x_t                        C_t: [N]

In the Nested Learning view (arXiv 2512.24695, eq. 64) this is a linear memory trained by one
gradient step per token on ``-<S k, v>`` with weight decay ``a_t``: keys ``B``, values ``x``,
queries ``C``, learning rate ``dt``.

Inner math runs in float32 (float64 for float64 inputs); ``y`` is cast back to ``x.dtype`` and the
final state stays in the compute dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.ops.ssd.common import check_inputs, compute_dtype, expand_groups

__all__ = ["naive_ssd"]


def naive_ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    *,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Per-token SSD recurrence (a Python loop over time).

    Args:
        x: ``[B, T, H, P]`` inputs (values).
        dt: ``[B, T, H]`` positive step sizes (already softplus-ed and biased by the caller).
        A: ``[H]`` negative decay rates (Mamba2's ``-exp(A_log)``).
        B: ``[B, T, G, N]`` input projections (keys), shared by the ``H // G`` heads of a group.
        C: ``[B, T, G, N]`` output projections (queries).
        D: ``[H]`` skip connection, or ``None``.
        initial_state: ``[B, H, P, N]`` state before the first token; ``None`` means zeros.
        chunk_size: ignored (kept so every SSD op has the same signature).

    Returns:
        ``(y, final_state)``: ``y: [B, T, H, P]`` in ``x.dtype`` and ``final_state: [B, H, P, N]``
        in the compute dtype.

    Example::

        >>> x = torch.randn(2, 10, 4, 8); dt = torch.rand(2, 10, 4); A = -torch.rand(4)
        >>> Bm, Cm = torch.randn(2, 10, 1, 16), torch.randn(2, 10, 1, 16)
        >>> y, S = naive_ssd(x, dt, A, Bm, Cm)
        >>> y.shape, S.shape
        (torch.Size([2, 10, 4, 8]), torch.Size([2, 4, 8, 16]))
    """
    check_inputs(x, dt, A, B, C, D, initial_state, chunk_size)
    cdt = compute_dtype(x)
    b, T, H, P = x.shape
    N = B.shape[-1]
    xs, dts, As = x.to(cdt), dt.to(cdt), A.to(cdt)
    Bh, Ch = expand_groups(B.to(cdt), H), expand_groups(C.to(cdt), H)  # [B, T, H, N]
    S = (
        torch.zeros(b, H, P, N, dtype=cdt, device=x.device)
        if initial_state is None
        else initial_state.to(cdt)
    )
    ys = []
    for t in range(T):
        a = torch.exp(dts[:, t] * As)  # [B, H]
        u = (dts[:, t, :, None] * xs[:, t])[..., None] * Bh[:, t, :, None, :]  # [B, H, P, N]
        S = a[..., None, None] * S + u
        y = (S * Ch[:, t, :, None, :]).sum(-1)  # [B, H, P]
        if D is not None:
            y = y + D.to(cdt)[:, None] * xs[:, t]
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else xs.new_zeros(b, 0, H, P)
    return y.to(x.dtype), S
