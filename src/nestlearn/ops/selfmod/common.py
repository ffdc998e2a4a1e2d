"""Shared pieces of the self-modifying Titans ops: state, adaptive projections, input checks.

Self-modifying Titans (Nested Learning arXiv 2512.24695 §8.1-8.2, eqs. 83-93) keeps, per sequence
and head, a set of residual-MLP memories ``M(x) = x + W_1 s(W_0 x)`` (eq. 89/91):

* the *projection memories* ``M_box``, ``box`` in ``names`` (a subset of ``k, v, q, eta, alpha``),
  which generate the keys, values, (optionally) queries, inner learning rate and retention of
  every token from the memory input ``x_t`` (eqs. 84-85, 87);
* the *main memory* ``M_memory``, read with the query: ``o_t = M_memory(q_t)`` (eq. 86).

Every memory ``M_box`` learns in context from the same key ``k_t`` with its own self-generated
value ``v_hat_box,t = M_box(v_t)`` (eq. 83), objective ``||M_box(k_t) - v_hat_box,t||^2`` (l2),
optimizer DGD with weight decay and optional momentum (eq. 88):

    M <- M (a_t I - eta_t k_t k_t^T) - eta_t grad,   with momentum S <- m_t S - eta_t grad

(``a_t`` = retention = ``1 - alpha_t`` in the Titans op's "forget" convention, ``eta_t`` the
inner learning rate, ``m_t`` the momentum gate.)

Chunk-wise training (eqs. 90-91): the projection memories advance in chunks of
``proj_chunk_size`` tokens and the main memory in chunks of ``chunk_size`` tokens ("two different
values of chunk sizes", §8.2). Every quantity of a token (its ``k, v, q, eta, alpha`` and every
``v_hat``) and every inner gradient is taken at the state its memory had at the end of the
previous chunk (the digest's reading of eq. 90's ``C ceil(t / C)``). Inside a chunk, momentum,
retention and the reads of ``M_memory`` are exact per token (the TTT / Titans dual form), and the
read comes before the token's own write (eq. 86: ``M_{memory, t-1}``).

Scalar projections: the paper's ``M_eta`` and ``M_alpha`` output scalars, which a residual MLP on
``x`` cannot. Here they are residual MLPs like the others, followed by a learned per-head readout:
``eta_t = max_lr * sigmoid(<r_eta, M_eta(x_t)> + b_eta)`` and
``alpha_t = sigmoid(<r_alpha, M_alpha(x_t)> + b_alpha)`` (docs/fidelity.md, HOPE-3). So every
memory has the same shape and all projection memories run as one batched "multi-head" memory.

Axis legend: B batch, T tokens, H heads, F head dim, n = len(names), G = n * H.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.ops.titans import TitansState, memory_forward
from nestlearn.ops.titans.common import Activation

__all__ = [
    "PROJECTIONS",
    "Projections",
    "SelfModState",
    "check_selfmod_inputs",
    "gradient_point",
    "prepare_state",
    "project",
]

PROJECTIONS = ("k", "v", "q", "eta", "alpha")
"""Projection memories in their canonical order; ``names`` must follow it."""


class SelfModState(NamedTuple):
    """Per-sequence state of self-modifying Titans.

    Attributes:
        proj: the projection memories, stacked on the head axis in ``names`` order: weights
            ``[B, n * H, o, i]`` (memory ``j`` of head ``h`` at index ``j * H + h``), momentum,
            and mid-chunk the chunk's anchor weights and offset (``proj_chunk_size`` chunks).
        memory: the main memory ``M_memory`` (``[B, H, o, i]``; ``chunk_size`` chunks).
    """

    proj: TitansState
    memory: TitansState

    def detach(self) -> SelfModState:
        """Cut the autograd history (truncated backprop through time)."""
        return SelfModState(self.proj.detach(), self.memory.detach())

    def to(self, dtype: torch.dtype) -> SelfModState:
        return SelfModState(self.proj.to(dtype), self.memory.to(dtype))


class Projections(NamedTuple):
    """Per-token quantities of one segment, ``[B, c, H, F]`` or ``[B, c, H]``."""

    k: Tensor
    v: Tensor
    q: Tensor
    eta: Tensor
    alpha: Tensor | None


def gradient_point(st: TitansState) -> tuple[Tensor, ...]:
    """The weights a chunk's quantities are computed at: the anchor mid-chunk, else the weights."""
    return st.anchor if st.offset > 0 and st.anchor is not None else st.weights


def project(
    weights: tuple[Tensor, ...],
    x: Tensor,
    names: tuple[str, ...],
    *,
    q: Tensor | None,
    k: Tensor | None,
    v: Tensor | None,
    eta_readout: tuple[Tensor, Tensor],
    alpha_readout: tuple[Tensor, Tensor] | None,
    max_lr: float,
    activation: Activation,
) -> Projections:
    """Adaptive projections of a segment (eqs. 84-85) from the projection memories ``weights``.

    Args:
        weights: projection memories ``[B, n * H, o, i]`` (at the segment's gradient point).
        x: ``[B, c, H, F]`` memory inputs shared by every projection memory, or ``[B, c, n, H,
            F]`` one input per memory (in ``names`` order). ``q, k, v``: fixed projections ``[B, c, H, F]`` or
            ``None`` where the projection is adaptive (then its name is in ``names``).
        eta_readout, alpha_readout: ``(r [H, F], b [H])`` of the scalar projections.

    Returns:
        :class:`Projections` with ``q``, ``k`` and ``v`` l2-normalised, ``eta`` in
        ``(0, max_lr)`` and ``alpha`` (forget) in ``(0, 1)``.
    """
    n = len(names)
    if x.dim() == 5:  # per-memory inputs [B, c, n, H, F]: memory j of head h at j H + h
        B, c, _, H, Fd = x.shape
        xr = x.permute(0, 2, 3, 1, 4).reshape(B, n * H, c, Fd)
    else:
        B, c, H, Fd = x.shape
        xr = x.transpose(1, 2).repeat(1, n, 1, 1)  # [B, n H, c, F]
    out = memory_forward(weights, xr, activation).view(B, n, H, c, Fd).transpose(2, 3)
    got = {name: out[:, j] for j, name in enumerate(names)}  # [B, c, H, F]
    kk = got["k"] if k is None else k
    vv = got["v"] if v is None else v
    qq = got["q"] if q is None else q
    r_eta, b_eta = eta_readout
    eta = max_lr * torch.sigmoid((got["eta"] * r_eta.to(x.dtype)).sum(-1) + b_eta.to(x.dtype))
    alpha = None
    if alpha_readout is not None:
        r_a, b_a = alpha_readout
        alpha = torch.sigmoid((got["alpha"] * r_a.to(x.dtype)).sum(-1) + b_a.to(x.dtype))
    # q and k are l2-normalised (§8.3); so is v (our choice, docs/fidelity.md HOPE-5): the
    # self-generated targets M(v) feed the memories' own outputs back into their updates, and an
    # unnormalised v lets that loop grow doubly exponentially (measured: NaN within a few steps).
    unit = F.normalize
    return Projections(unit(kk, dim=-1), unit(vv, dim=-1), unit(qq, dim=-1), eta, alpha)


def check_selfmod_inputs(
    x: Tensor,
    names: tuple[str, ...],
    q: Tensor | None,
    k: Tensor | None,
    v: Tensor | None,
    momentum: Tensor | None,
    alpha_readout: tuple[Tensor, Tensor] | None,
    state: SelfModState,
    chunk_size: int,
    proj_chunk_size: int,
) -> None:
    """Validate shapes and the names/fixed-projection pairing; errors name the fix."""
    if x.dim() == 5:
        if x.shape[2] != len(names):
            raise ValueError(
                f"per-memory inputs x must be [B, T, n={len(names)}, H, F], got {tuple(x.shape)}"
            )
        B, T, _, H, Fd = x.shape
    elif x.dim() == 4:
        B, T, H, Fd = x.shape
    else:
        raise ValueError(f"x must be [B, T, H, F] or [B, T, n, H, F], got {tuple(x.shape)}")
    order = [p for p in PROJECTIONS if p in names]
    if list(names) != order or len(set(names)) != len(names):
        raise ValueError(f"names must be a subset of {PROJECTIONS} in that order, got {names}")
    if "eta" not in names:
        raise ValueError("names must contain 'eta' (the inner learning rate is always adaptive)")
    for name, fixed in (("q", q), ("k", k), ("v", v)):
        if (name in names) == (fixed is not None):
            raise ValueError(
                f"{name!r} is adaptive iff it is in names and no fixed {name} is given; "
                f"got names={names} and {name}={'a tensor' if fixed is not None else None}"
            )
        if fixed is not None and fixed.shape != (B, T, H, Fd):
            raise ValueError(f"fixed {name} must be [B, T, H, F] = {(B, T, H, Fd)}")
    if ("alpha" in names) != (alpha_readout is not None):
        raise ValueError("give alpha_readout exactly when 'alpha' is in names (weight decay on)")
    if momentum is not None and momentum.shape != (B, T, H):
        raise ValueError(f"momentum must be [B, T, H] = [{B}, {T}, {H}]")
    if chunk_size < 1 or proj_chunk_size < 1:
        raise ValueError(
            f"chunk sizes must be >= 1, got chunk_size={chunk_size}, "
            f"proj_chunk_size={proj_chunk_size}"
        )
    n = len(names)
    for label, st, heads, csz in (
        ("proj", state.proj, n * H, proj_chunk_size),
        ("memory", state.memory, H, chunk_size),
    ):
        if len(st.weights) < 2:
            raise ValueError(f"state.{label} must be a residual MLP memory (>= 2 weights)")
        w0 = st.weights[0]
        if w0.shape[:2] != (B, heads) or w0.shape[-1] != Fd:
            raise ValueError(
                f"state.{label}.weights[0] must be [B={B}, {heads}, hidden, F={Fd}], "
                f"got {tuple(w0.shape)}"
            )
        if momentum is None and st.momentum is not None:
            raise ValueError(f"state.{label} has momentum buffers but momentum is None")
        if not 0 <= st.offset < csz:
            raise ValueError(
                f"state.{label}.offset={st.offset} is outside [0, {csz}); thread states only "
                "between calls with the same chunk sizes"
            )


def prepare_state(state: SelfModState, momentum: bool, dtype: torch.dtype) -> SelfModState:
    """Cast to the compute dtype and add zero momentum buffers where momentum is on."""

    def one(st: TitansState) -> TitansState:
        st = st.to(dtype)
        if momentum and st.momentum is None:
            st = st._replace(momentum=tuple(torch.zeros_like(w) for w in st.weights))
        return st

    return SelfModState(one(state.proj), one(state.memory))
