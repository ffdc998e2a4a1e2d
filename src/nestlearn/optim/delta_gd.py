"""Delta Gradient Descent (DGD) for linear layers: eqs. 56–57 and 121 of arXiv 2512.24695.

GD's inner objective is a dot product; DGD replaces it by l2 regression, which gives (for a
unit-norm input x, Sherman–Morrison, eta' = eta / (1 + eta)):

    W_{t+1} = W_t (I - eta' x x^T) - eta' grad_W L        (eq. 57)

i.e. plain GD plus a decay of the weights along the current input direction. App. C (eq. 121)
writes the same rule with free coefficients, W (I - a x x^T) - b grad_W L.

The rule needs the layer's inputs, which a ``torch.optim.Optimizer`` does not see, so
:class:`DeltaGD` registers forward hooks on the ``nn.Linear`` modules of ``modules`` and keeps,
between two steps, C = mean_n x_n x_n^T / ||x_n||^2 over every input row seen in training
forwards (grad enabled, module in train mode); ``step`` consumes them. For one unit-norm input this is eq. 57 exactly
(tested against the closed-form argmin of eq. 56); for a batch it is its average.
Every other parameter (biases, norms, non-Linear matrices) goes to the AdamW fallback group.

Statistics are accumulated in float32 (float64 for float64 weights).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nestlearn.optim.base import NestedOptimizer
from nestlearn.utils.dtypes import compute_dtype


def delta_gd_update(
    weight: Tensor, grad: Tensor, input_cov: Tensor, *, lr: float, decay: float | None = None
) -> Tensor:
    """The DGD step of a linear weight [D_out, D_in] as a pure function; returns the new weight.

    ``input_cov`` [D_in, D_in] is C above. ``decay=None`` ties the coefficients as eq. 57:
    a = b = lr / (1 + lr). A number gives eq. 121: a = decay, b = lr (``decay=0`` is SGD).
    """
    if decay is None:
        a = b = lr / (1.0 + lr)
    else:
        a, b = decay, lr
    return weight - a * (weight @ input_cov.to(weight.dtype)) - b * grad


class DeltaGD(NestedOptimizer):
    """Delta Gradient Descent on the ``nn.Linear`` weights of ``modules`` (AdamW for the rest).

    Args:
        params: parameters or parameter groups (normally ``model.parameters()``).
        modules: the module whose ``nn.Linear`` submodules are hooked; only their weights use DGD.
        lr: learning rate (eta of eq. 57, or b of eq. 121 when ``decay`` is given).
        decay: ``None`` for eq. 57's tied coefficients, or a of eq. 121.
        weight_decay: decoupled weight decay (applied to both kinds of group).

    Call :meth:`remove_hooks` to detach the optimizer from the model.
    """

    def __init__(
        self,
        params: Any,
        *,
        modules: nn.Module,
        lr: float = 1e-2,
        decay: float | None = None,
        weight_decay: float = 0.0,
        fallback_betas: tuple[float, float] = (0.9, 0.95),
        fallback_eps: float = 1e-8,
        foreach: bool = True,
    ) -> None:
        if decay is not None and decay < 0:
            raise ValueError(f"decay must be >= 0 or None, got {decay}")
        linears = [m for m in modules.modules() if isinstance(m, nn.Linear)]
        self._linear_ids = {id(m.weight) for m in linears}
        self._stats: dict[int, list[Any]] = {}  # id(weight) -> [sum of x x^T / |x|^2, count]
        self._hooks = [m.register_forward_hook(self._make_hook(m.weight)) for m in linears]
        defaults = dict(lr=lr, decay=decay, weight_decay=weight_decay)
        super().__init__(params, defaults, fallback_betas=fallback_betas,
                         fallback_eps=fallback_eps, foreach=foreach)  # fmt: skip

    def supports(self, p: Tensor) -> bool:
        return id(p) in self._linear_ids

    def _make_hook(self, weight: Tensor) -> Any:
        key = id(weight)

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if not (module.training and torch.is_grad_enabled()):
                return
            with torch.no_grad():
                dt = compute_dtype(weight)
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(dt)
                x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-30)
                cov = x.T @ x
                entry = self._stats.get(key)
                if entry is None:
                    self._stats[key] = [cov, x.shape[0]]
                else:
                    entry[0] += cov
                    entry[1] += x.shape[0]

        return hook

    def remove_hooks(self) -> None:
        """Detach the forward hooks from the model."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _method_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        news = []
        for p in params:
            entry = self._stats.pop(id(p), None)
            if entry is None:
                raise RuntimeError(
                    f"DeltaGD has no recorded inputs for a weight of shape {tuple(p.shape)}: run "
                    "a training forward (module.train(), grad enabled) before step(), or put "
                    "this parameter in a group with use_fallback=True"
                )
            cov = entry[0] / entry[1]
            if group["weight_decay"] != 0:
                p.mul_(1.0 - group["lr"] * group["weight_decay"])
            news.append(delta_gd_update(p, p.grad, cov, lr=group["lr"], decay=group["decay"]))
        for p, new in zip(params, news):
            p.copy_(new)
