"""Newton–Schulz orthogonalisation and Muon's learning-rate shape adjustment.

Newton–Schulz is the non-linear output map sigma of eq. 52 (arXiv 2512.24695) and, read as an
inner optimiser, the k steps of eq. 44 on the objective ||O^T O - I||_F^2 (eq. 43). The
quintic coefficients and the scaling are exactly those of ``torch.optim.Muon`` (torch 2.13),
so that ``NonlinearOutputMomentum`` with ``ns_dtype="bfloat16"`` reproduces it bit for bit.

Precision: the iteration runs in ``ns_dtype`` (see :func:`resolve_ns_dtype`); callers cast
the result back to the parameter's dtype.

Axis legend: ``[..., R, C]`` = optional batch of matrices with R rows and C columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
"""Keller Jordan's quintic coefficients (a, b, c), the ``torch.optim.Muon`` default."""
NS_EPS = 1e-7
"""Floor on the Frobenius norm before the iteration, as in ``torch.optim.Muon``."""
ADJUST_LR_FNS = ("original", "match_rms_adamw", "none")


def resolve_ns_dtype(ns_dtype: str | torch.dtype | None, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype Newton–Schulz runs in.

    ``None`` / ``"auto"``: float64 for float64 parameters (so float64 tests are exact),
    otherwise bfloat16 (Muon practice; on a CPU with AVX512-BF16 it is ~4x faster than float32
    and the iteration is insensitive to rounding). A string names a dtype explicitly:
    ``"bfloat16"``, ``"float32"``, ``"float64"`` or ``"param"`` (the parameter's own dtype).
    """
    if isinstance(ns_dtype, torch.dtype):
        return ns_dtype
    if ns_dtype in (None, "auto"):
        return torch.float64 if param_dtype == torch.float64 else torch.bfloat16
    if ns_dtype == "param":
        return param_dtype
    table = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
    if ns_dtype not in table:
        raise ValueError(
            f"ns_dtype={ns_dtype!r} is not known; use auto, param, bfloat16, float32 or float64"
        )
    return table[ns_dtype]


def newton_schulz(
    x: Tensor,
    steps: int = 5,
    coefficients: Sequence[float] = NS_COEFFICIENTS,
    eps: float = NS_EPS,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Approximately orthogonalise ``x`` ([R, C] or [B, R, C]) with ``steps`` quintic iterations.

    X <- X / max(||X||_F, eps); then X <- a X + (b A + c A^2) X with A = X X^T, on the
    shorter side (X is transposed when R > C), exactly as ``torch.optim.Muon``. ``steps=0``
    returns ``x`` unchanged (no normalisation either): it is the identity output map, which is
    how M3 reduces to AdamW; it ignores ``dtype``. Otherwise returns a tensor in ``dtype``
    (default ``x.dtype``), same shape.
    """
    if steps < 0:
        raise ValueError(f"ns_steps must be >= 0, got {steps}")
    if steps == 0:
        return x
    if x.ndim not in (2, 3):
        raise ValueError(f"newton_schulz expects [R, C] or [B, R, C], got shape {tuple(x.shape)}")
    a, b, c = coefficients
    y = x.to(dtype or x.dtype)
    if y is x:
        y = y.clone()  # never normalise the caller's tensor in place
    tall = x.size(-2) > x.size(-1)
    if tall:
        y = y.mT
    if y.ndim == 2:
        # The same calls, in the same order, as torch.optim._muon._zeropower_via_newtonschulz.
        y = y.div(y.norm().clamp(min=eps))
        for _ in range(steps):
            gram = y @ y.T
            upd = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            y = torch.addmm(y, upd, y, beta=a)
    else:
        norms = torch.linalg.vector_norm(y, dim=(-2, -1), keepdim=True)
        y = y.div(norms.clamp(min=eps))
        for _ in range(steps):
            gram = y @ y.mT
            upd = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
            y = torch.baddbmm(y, upd, y, beta=a)
    return y.mT if tall else y


def newton_schulz_many(
    xs: Sequence[Tensor],
    steps: int = 5,
    coefficients: Sequence[float] = NS_COEFFICIENTS,
    eps: float = NS_EPS,
    dtype: torch.dtype | None = None,
    batched: bool = True,
) -> list[Tensor]:
    """:func:`newton_schulz` of each matrix in ``xs``; ``batched`` stacks equal shapes into one
    [B, R, C] call (fewer kernel launches; equal to the loop up to matmul rounding)."""
    if not batched or steps == 0:
        return [newton_schulz(x, steps, coefficients, eps, dtype) for x in xs]
    out: list[Tensor | None] = [None] * len(xs)
    by_shape: dict[tuple[tuple[int, ...], torch.dtype, torch.device], list[int]] = {}
    for i, x in enumerate(xs):
        by_shape.setdefault((tuple(x.shape), x.dtype, x.device), []).append(i)
    for idx in by_shape.values():
        if len(idx) == 1:
            out[idx[0]] = newton_schulz(xs[idx[0]], steps, coefficients, eps, dtype)
            continue
        ys = newton_schulz(torch.stack([xs[i] for i in idx]), steps, coefficients, eps, dtype)
        for j, i in enumerate(idx):
            out[i] = ys[j]
    return out  # type: ignore[return-value]


def muon_lrs(group: dict[str, Any], params: Sequence[Tensor], *, scaled: bool) -> list[float]:
    """Each parameter's step size: the group's ``lr``, times :func:`muon_lr_scale` of its shape
    (with the group's ``adjust_lr_fn``) when ``scaled``."""
    lr = group["lr"]
    if not scaled:
        return [lr] * len(params)
    return [lr * muon_lr_scale(p.shape, group["adjust_lr_fn"]) for p in params]


def muon_lr_scale(shape: Sequence[int], adjust_lr_fn: str | None) -> float:
    """Factor Muon multiplies the learning rate by for a matrix of ``shape`` [A, B, ...].

    ``original`` (torch's default, Keller Jordan): sqrt(max(1, A/B)). ``match_rms_adamw``
    (Moonshot): 0.2 sqrt(max(A, B)), which gives the update an RMS of about 0.2 like AdamW's,
    so the AdamW learning rate can be reused. ``none``: 1.
    """
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        rows, cols = shape[0], math.prod(shape[1:])
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        rows, cols = shape[0], math.prod(shape[1:])
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn == "none":
        return 1.0
    raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r} is not known; use one of {ADJUST_LR_FNS}")
