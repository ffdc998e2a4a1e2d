"""Reference self-modifying Titans: a plain per-token loop, the spec for ``chunk.py``.

Each token ``t`` (Nested Learning eqs. 83-91, chunk-wise reading of eq. 90):

* at a ``proj_chunk_size`` boundary the projection memories' gradient point ``A_p`` becomes their
  current weights; at a ``chunk_size`` boundary the main memory's ``A_m`` does;
* ``k_t, v_t, q_t, eta_t, alpha_t`` come from the projection memories at ``A_p`` (eqs. 84-85);
* the self-generated values ``v_hat_box = M_box(v_t)`` are computed at each memory's own gradient
  point (eq. 83), explicitly here (the chunked op computes them inside ``chunk_titans``);
* every memory takes one Titans / DGD step with the inner gradient of ``||M(k_t) - v_hat||^2`` at
  its gradient point (``torch.func.grad``, via the Titans reference step); the main memory is
  read before its write: ``o_t = M_{memory, t-1}(q_t)`` (eq. 86).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.ops.common import compute_dtype
from nestlearn.ops.selfmod.common import SelfModState, check_selfmod_inputs, prepare_state, project
from nestlearn.ops.titans import TitansState, memory_forward
from nestlearn.ops.titans.common import Activation, Optimizer, check_prior
from nestlearn.ops.titans.naive import _step, renorm_hidden

__all__ = ["naive_selfmod_titans"]


def naive_selfmod_titans(
    x: Tensor,
    state: SelfModState,
    *,
    names: tuple[str, ...],
    eta_readout: tuple[Tensor, Tensor],
    alpha_readout: tuple[Tensor, Tensor] | None = None,
    q: Tensor | None = None,
    k: Tensor | None = None,
    v: Tensor | None = None,
    momentum: Tensor | None = None,
    chunk_size: int = 64,
    proj_chunk_size: int = 16,
    max_lr: float = 0.01,
    activation: Activation = "silu",
    optimizer: Optimizer = "dgd",
    exact_output: bool = False,
    hidden_chunk: bool = False,
    hidden_prior: tuple[tuple[Tensor, ...], tuple[Tensor, ...]] | None = None,
    proj_lr_scale: float = 1.0,
) -> tuple[Tensor, SelfModState]:
    """Per-token reference with :func:`~nestlearn.ops.selfmod.chunk.chunk_selfmod_titans`'s
    signature and contract."""
    check_selfmod_inputs(
        x, names, q, k, v, momentum, alpha_readout, state, chunk_size, proj_chunk_size
    )
    if hidden_prior is not None:
        check_prior(hidden_prior[0], hidden_chunk, state.proj)
        check_prior(hidden_prior[1], hidden_chunk, state.memory)
    B, T = x.shape[:2]
    H, Fd = x.shape[-2:]
    n = len(names)
    cdt = compute_dtype(x)
    st = prepare_state(state, momentum is not None, cdt)
    xs, qs, ks, vs = (None if t is None else t.to(cdt) for t in (x, q, k, v))
    assert xs is not None
    mom = None if momentum is None else momentum.to(cdt)
    pp = pm = None
    if hidden_prior is not None:
        pp, pm = ([p.to(cdt) for p in ps] for ps in hidden_prior)

    def rep(t: Tensor | None) -> Tensor | None:  # [B, H, ...] -> [B, n H, ...]
        return None if t is None else t.repeat(1, n, *([1] * (t.dim() - 2)))

    Wp, Sp = list(st.proj.weights), None if st.proj.momentum is None else list(st.proj.momentum)
    Wm, Sm = (
        list(st.memory.weights),
        None if st.memory.momentum is None else list(st.memory.momentum),
    )
    Ap = list(st.proj.anchor) if st.proj.offset > 0 else Wp  # type: ignore[arg-type]
    Am = list(st.memory.anchor) if st.memory.offset > 0 else Wm  # type: ignore[arg-type]
    pos_p, pos_m = st.proj.offset, st.memory.offset
    ys = []
    for t in range(T):
        if pos_p % proj_chunk_size == 0:
            Ap = Wp
        if pos_m % chunk_size == 0:
            Am = Wm
        sl = slice(t, t + 1)
        p = project(
            tuple(Ap), xs[:, sl], names,
            q=None if qs is None else qs[:, sl], k=None if ks is None else ks[:, sl],
            v=None if vs is None else vs[:, sl], eta_readout=eta_readout,
            alpha_readout=alpha_readout, max_lr=max_lr, activation=activation,
        )  # fmt: skip
        kt, vt, qt, et = p.k[:, 0], p.v[:, 0], p.q[:, 0], p.eta[:, 0]  # [B, H, F], [B, H]
        at = None if p.alpha is None else p.alpha[:, 0]
        mt = None if mom is None else mom[:, t]
        vhat_p = memory_forward(Ap, rep(vt), activation)  # type: ignore[arg-type]
        vhat_m = memory_forward(Am, vt, activation)
        Wp, Sp, _ = _step(
            Wp, Sp, Ap, None, rep(kt), vhat_p, rep(et * proj_lr_scale), rep(mt), rep(at),  # type: ignore[arg-type]
            activation, optimizer, "after", False, exact_output, hidden_chunk, proj_chunk_size,
            pp,
        )  # fmt: skip
        Wm, Sm, y = _step(
            Wm, Sm, Am, qt, kt, vhat_m, et, mt, at, activation, optimizer, "before", False,
            exact_output, hidden_chunk, chunk_size, pm,
        )  # fmt: skip
        ys.append(y)
        pos_p += 1
        pos_m += 1
        if hidden_chunk and pos_p % proj_chunk_size == 0:
            Wp = renorm_hidden(Wp, Ap)
        if hidden_chunk and pos_m % chunk_size == 0:
            Wm = renorm_hidden(Wm, Am)
    off_p, off_m = pos_p % proj_chunk_size, pos_m % chunk_size
    proj = TitansState(
        tuple(Wp), None if Sp is None else tuple(Sp), tuple(Ap) if off_p else None, off_p
    )
    memory = TitansState(
        tuple(Wm), None if Sm is None else tuple(Sm), tuple(Am) if off_m else None, off_m
    )
    o = torch.stack(ys, dim=1)  # type: ignore[arg-type]
    return o.to(x.dtype), SelfModState(proj, memory)
