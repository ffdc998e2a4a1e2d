"""Deep Momentum Gradient Descent (DMGD), eq. 50 of arXiv 2512.24695.

The paper replaces the matrix momentum by an MLP memory m(.) trained by its own inner
objective L^(2):  W_{i+1} = W_i + m_{i+1}(u_i),  m_{i+1} = alpha m_i - eta grad L^(2)(m_i; u_i).
It gives no architecture, inner objective or experiment, so this module fixes one reading and
documents it (docs/optimizers.md):

* A parameter's gradient u is viewed as a matrix [R, C] (vectors as one row); its rows u_r
  are the items the memory stores. Keys are the unit rows k_r = u_r / ||u_r||.
* The memory is residual:  m(u)_r = M_r + tanh(k_r W1) W2, with a linear part M [R, C] (the
  classic momentum matrix), a key map W1 [C, H] and a value map W2 [H, C] (H = ``hidden``).
  The deep part recalls past gradient rows whose keys resemble the current one (a kernel
  associative memory of gradients); the linear part is plain momentum.
* Inner objectives (gradient units, as ``torch.optim.SGD``'s buffer):
  ``dot``: L = -<m(u), u>  (eq. 34's dot-product objective);
  ``l2``:  L = 1/2 ||m(u) - u||^2  (regression onto the gradient, the delta-rule objective).
* One inner step per outer step: M <- mu M - inner_lr dL/dM, W2 <- mu W2 - inner_lr dL/dW2;
  the key map learns without decay by a normalised step W1 <- W1 - key_lr G / ||G||_F (G =
  dL/dW1, whose scale is that of g^2, so an unnormalised step would depend on the loss scale).
* Read-out with the updated memory: W <- W (1 - lr wd) - lr m_{i+1}(u_i).

Reductions (tested): ``hidden=0``, ``dot``, ``inner_lr=1``: M <- mu M + u, i.e.
``torch.optim.SGD(momentum=mu)``. ``hidden=0``, ``l2``, ``momentum=1``, ``inner_lr=1-beta``:
M <- M - (1-beta)(M - u), the EMA buffer of Adam/Muon.

Inner math runs in float32 for low-precision parameters (float64 stays float64), cast back.
Axis legend: R rows (outputs), C columns (inputs), H hidden width of the memory.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from nestlearn.optim.base import NestedOptimizer, as_matrix
from nestlearn.utils.dtypes import compute_dtype

OBJECTIVES = ("dot", "l2")


class DeepMomentumState(NamedTuple):
    """Memory of one parameter: linear part ``m`` [R, C], key map ``w1`` [C, H], values ``w2``
    [H, C]. With H = 0, ``w1``/``w2`` are empty."""

    m: Tensor
    w1: Tensor
    w2: Tensor


def deep_momentum_update(
    grad: Tensor,
    state: DeepMomentumState,
    *,
    momentum: float,
    objective: str = "dot",
    inner_lr: float = 1.0,
    key_lr: float = 0.01,
) -> tuple[Tensor, DeepMomentumState]:
    """One DMGD step (see module docstring). ``grad`` [R, C] (or any shape, viewed as a matrix).

    Returns ``(direction [R, C], new_state)``; the caller applies W <- W - lr direction.
    """
    u = as_matrix(grad)
    m, w1, w2 = state
    hidden = w1.shape[-1]
    if hidden == 0:
        r = -u if objective == "dot" else m - u  # dL/dM
        m_new = m * momentum - inner_lr * r
        return m_new, DeepMomentumState(m_new, w1, w2)
    k = u / u.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    a = torch.tanh(k @ w1)  # [R, H]
    out = m + a @ w2
    r = -u if objective == "dot" else out - u  # dL/dout, [R, C]
    g_w2 = a.T @ r  # [H, C]
    g_z = (r @ w2.T) * (1.0 - a * a)  # [R, H]
    g_w1 = k.T @ g_z  # [C, H]
    m_new = m * momentum - inner_lr * r
    w2_new = w2 * momentum - inner_lr * g_w2
    w1_new = w1 - key_lr * g_w1 / g_w1.norm().clamp(min=1e-30)
    direction = m_new + torch.tanh(k @ w1_new) @ w2_new
    return direction, DeepMomentumState(m_new, w1_new, w2_new)


class DeepMomentum(NestedOptimizer):
    """DMGD (eq. 50): momentum whose memory is a small residual MLP trained by its inner objective.

    Args:
        params: parameters or parameter groups (every tensor is handled, vectors as one row).
        lr: learning rate of the read-out.
        momentum: mu, the retention (forget gate) of the memory's value-side parameters.
        hidden: H, the width of the memory's MLP part; 0 = linear memory (plain momentum).
        objective: inner objective ``dot`` or ``l2``.
        inner_lr: step size of the memory's own gradient step (1 with ``dot`` = SGD's buffer).
        key_lr: normalised step size of the key map W1.
        weight_decay: decoupled weight decay.
        seed: seeds W1's initialisation (normal / sqrt(C)), so two runs with the
            same seed are identical.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        momentum: float = 0.9,
        *,
        hidden: int = 16,
        objective: str = "dot",
        inner_lr: float = 1.0,
        key_lr: float = 0.01,
        weight_decay: float = 0.0,
        seed: int = 0,
        fallback_betas: tuple[float, float] = (0.9, 0.95),
        fallback_eps: float = 1e-8,
        foreach: bool = True,
    ) -> None:
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if hidden < 0:
            raise ValueError(f"hidden must be >= 0, got {hidden}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r}; use one of {OBJECTIVES}")
        if not inner_lr > 0 or key_lr < 0:
            raise ValueError(f"need inner_lr > 0 and key_lr >= 0, got {inner_lr}, {key_lr}")
        self._seed = seed
        self._n_init = 0
        defaults = dict(lr=lr, momentum=momentum, hidden=hidden, objective=objective,
                        inner_lr=inner_lr, key_lr=key_lr, weight_decay=weight_decay)  # fmt: skip
        super().__init__(params, defaults, fallback_betas=fallback_betas,
                         fallback_eps=fallback_eps, foreach=foreach)  # fmt: skip

    @staticmethod
    def _work_dtype(p: Tensor) -> torch.dtype:
        return compute_dtype(p)

    def _init_state(self, p: Tensor, hidden: int) -> dict[str, Tensor]:
        rows, cols = as_matrix(p).shape
        dt = self._work_dtype(p)
        # One generator per parameter, seeded by (seed, order of first use): deterministic.
        gen = torch.Generator(device="cpu").manual_seed(self._seed * 1_000_003 + self._n_init)
        self._n_init += 1
        w1 = torch.randn(cols, hidden, generator=gen, dtype=dt) / cols**0.5
        return {
            "m": torch.zeros(rows, cols, dtype=dt, device=p.device),
            "w1": w1.to(p.device),
            "w2": torch.zeros(hidden, cols, dtype=dt, device=p.device),
        }

    def _method_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        dirs = []
        for p in params:
            st = self.state[p]
            if "m" not in st:
                st.update(self._init_state(p, group["hidden"]))
            elif st["m"].dtype != self._work_dtype(p):  # load_state_dict casts to p.dtype
                for key in ("m", "w1", "w2"):
                    st[key] = st[key].to(self._work_dtype(p))
            state = DeepMomentumState(st["m"], st["w1"], st["w2"])
            d, new = deep_momentum_update(
                p.grad.to(st["m"].dtype), state, momentum=group["momentum"],
                objective=group["objective"], inner_lr=group["inner_lr"], key_lr=group["key_lr"],
            )  # fmt: skip
            st["m"].copy_(new.m)
            st["w1"].copy_(new.w1)
            st["w2"].copy_(new.w2)
            dirs.append(d.reshape(p.shape))
        self._apply(group, params, dirs)
