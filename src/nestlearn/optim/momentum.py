"""The momentum family of Nested Learning (arXiv 2512.24695, §4.2–4.4, eqs. 33–52).

Each optimizer here is a pure update function (tensors in, tensors out, nothing mutated) plus a
thin :class:`~nestlearn.optim.base.NestedOptimizer` subclass that owns the state.

Sign and scale convention (the one of ``torch.optim.SGD``): the momentum buffer ``b`` is kept
in gradient units and the learning rate is applied when reading it out,

    b_{t+1} = mu b_t + g_t,      W_{t+1} = W_t - lr b_{t+1}.

The paper writes eq. 33 as m_{t+1} = alpha m_t - eta g_t, W_{t+1} = W_t + m_{t+1}. For a
constant learning rate the two are the same sequence with m = -lr b and alpha = mu; under a
schedule the paper puts eta_t inside the memory while torch (and we) apply the current lr to
the whole buffer. ``ema=True`` switches the buffer to b <- mu b + (1 - mu) g (``lerp``, the
form of Adam and ``torch.optim.Muon``).

Weight decay is decoupled everywhere: W <- W (1 - lr wd) before the step (AdamW, Muon).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from nestlearn.optim.base import NestedOptimizer, as_matrix, store
from nestlearn.optim.newton_schulz import (
    ADJUST_LR_FNS,
    NS_COEFFICIENTS,
    NS_EPS,
    muon_lrs,
    newton_schulz_many,
    resolve_ns_dtype,
)

PRECONDITIONERS = ("identity", "adam", "adagrad")
FEATURE_MAPS = ("identity", "sign", "tanh", "rms")
OUTPUT_MAPS = ("newton-schulz", "sign", "tanh", "identity")


def _check_common(lr: float, momentum: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")


def _momentum_step(
    opt: NestedOptimizer, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
) -> list[Tensor]:
    """:func:`momentum_update` of ``grads`` with the group's settings on ``opt``'s
    ``momentum_buffer`` of each parameter (zeros at first), which it replaces; returns the
    directions."""
    d, new = momentum_update(grads, opt._buffers(params), momentum=group["momentum"],
                             ema=group["ema"], nesterov=group["nesterov"],
                             foreach=group["foreach"])  # fmt: skip
    store(opt.state, params, "momentum_buffer", new)
    return d


def momentum_update(
    grads: Sequence[Tensor],
    bufs: Sequence[Tensor],
    *,
    momentum: float,
    ema: bool = False,
    nesterov: bool = False,
    foreach: bool = True,
) -> tuple[list[Tensor], list[Tensor]]:
    """Linear momentum, eq. 33, as a pure function. Returns ``(directions, new_bufs)``.

    ``ema=False``: b' = mu b + g (``torch.optim.SGD``, dampening 0; its first step b = g is the
    same thing since b starts at 0); nesterov direction g + mu b'.
    ``ema=True``: b' = lerp(b, g, 1 - mu); nesterov direction lerp(g, b', mu)
    (``torch.optim.Muon``). Without nesterov the direction is b'.
    """
    grads, bufs = list(grads), list(bufs)
    if ema:
        new = torch._foreach_lerp(bufs, grads, 1.0 - momentum) if foreach else [
            b.lerp(g, 1.0 - momentum) for b, g in zip(bufs, grads)
        ]  # fmt: skip
        if not nesterov:
            return list(new), list(new)
        d = [g.lerp(b, momentum) for g, b in zip(grads, new)]
        return d, list(new)
    if foreach:
        new = torch._foreach_mul(bufs, momentum)
        torch._foreach_add_(new, grads)
        d = torch._foreach_add(grads, new, alpha=momentum) if nesterov else new
        return list(d), list(new)
    new = [b.mul(momentum).add_(g) for b, g in zip(bufs, grads)]
    d = [g.add(b, alpha=momentum) for g, b in zip(grads, new)] if nesterov else new
    return d, new


# --------------------------------------------------------------------------------------------
# Preconditioned momentum, eq. 47
# --------------------------------------------------------------------------------------------
def precondition(
    x: Tensor, v: Tensor, step: int, *, preconditioner: str, beta2: float, eps: float
) -> Tensor:
    """P(x) for the diagonal preconditioners of App. B (eqs. 102–105).

    ``identity``: x. ``adam``: x / (sqrt(v / (1 - beta2^t)) + eps) with v an EMA of g^2.
    ``adagrad``: x / (sqrt(v) + eps) with v the running sum of g^2.
    """
    if preconditioner == "identity":
        return x
    if preconditioner == "adam":
        return x / (v.sqrt() / (1.0 - beta2**step) ** 0.5 + eps)
    return x / (v.sqrt() + eps)


def preconditioned_momentum_update(
    grad: Tensor,
    buf: Tensor,
    second_moment: Tensor,
    step: int,
    *,
    momentum: float,
    preconditioner: str = "adam",
    apply_to: str = "grad",
    ema: bool = True,
    nesterov: bool = False,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor, Tensor]:
    """One step of preconditioned momentum (eq. 47). Returns ``(direction, buf, second_moment)``.

    ``step`` = t >= 1 counts this step. The second moment is v' = beta2 v + (1 - beta2) g^2
    (``adam``) or v' = v + g^2 (``adagrad``); ``identity`` leaves it untouched.

    ``apply_to="grad"`` is eq. 47 as printed: b' = mu b + P(g), direction b'.
    ``apply_to="momentum"`` preconditions the read-out instead: b' = mu b + g, direction P(b'),
    the form App. B (eq. 105) derives Adam from. With ``ema`` the buffer is an EMA and the
    direction is divided by the bias correction 1 - mu^t.

    Reductions (tested): ``identity``, ema False == SGD(momentum); ``adam`` on the momentum with
    ema == AdamW(betas=(mu, beta2)); ``adam`` on the gradient with mu = 0 == AdamW(betas=(0, beta2)).
    """
    if preconditioner == "adam":
        second_moment = second_moment.mul(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    elif preconditioner == "adagrad":
        second_moment = second_moment.addcmul(grad, grad)
    pre = {"preconditioner": preconditioner, "beta2": beta2, "eps": eps}
    x = precondition(grad, second_moment, step, **pre) if apply_to == "grad" else grad
    (d,), (buf,) = momentum_update([x], [buf], momentum=momentum, ema=ema, nesterov=nesterov,
                                   foreach=False)  # fmt: skip
    if ema and momentum > 0:
        d = d / (1.0 - momentum**step)
    if apply_to == "momentum":
        d = precondition(d, second_moment, step, **pre)
    return d, buf, second_moment


class PreconditionedMomentum(NestedOptimizer):
    """Momentum with a pluggable diagonal preconditioner P (eq. 47, App. B).

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        momentum: mu (alpha of eq. 47, the forget gate of the momentum memory).
        preconditioner: ``identity``, ``adam`` (EMA second moment, bias-corrected) or
            ``adagrad`` (running-sum second moment).
        apply_to: ``grad`` (eq. 47: the memory stores P(g)) or ``momentum`` (P applied to the
            read-out, eq. 105).
        ema: EMA buffer with bias correction (True) or SGD's sum buffer (False).
        nesterov: Nesterov read-out.
        beta2, eps: second-moment decay and epsilon.
        weight_decay: decoupled weight decay.
        fallback_betas, fallback_eps: AdamW settings of fallback groups (none are created
            automatically: this method handles every tensor).
        foreach: use ``torch._foreach_*`` kernels where they apply.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.9,
        *,
        preconditioner: str = "adam",
        apply_to: str = "grad",
        ema: bool = True,
        nesterov: bool = False,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        fallback_betas: tuple[float, float] = (0.9, 0.95),
        fallback_eps: float = 1e-8,
        foreach: bool = True,
    ) -> None:
        _check_common(lr, momentum)
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner={preconditioner!r}; use one of {PRECONDITIONERS}")
        if apply_to not in ("grad", "momentum"):
            raise ValueError(f"apply_to={apply_to!r}; use 'grad' or 'momentum'")
        if not 0 <= beta2 < 1:
            raise ValueError(f"beta2 must be in [0, 1), got {beta2}")
        defaults = dict(lr=lr, momentum=momentum, preconditioner=preconditioner,
                        apply_to=apply_to, ema=ema, nesterov=nesterov, beta2=beta2, eps=eps,
                        weight_decay=weight_decay)  # fmt: skip
        super().__init__(params, defaults, fallback_betas=fallback_betas,
                         fallback_eps=fallback_eps, foreach=foreach)  # fmt: skip

    def _method_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        dirs = []
        keys = ("momentum", "preconditioner", "apply_to", "ema", "nesterov", "beta2", "eps")
        hp = {k: group[k] for k in keys}
        for p in params:
            st = self._counted_state(p, ("momentum_buffer", "second_moment"))
            d, b, v = preconditioned_momentum_update(
                p.grad, st["momentum_buffer"], st["second_moment"], st["step"], **hp
            )
            st["momentum_buffer"], st["second_moment"] = b, v
            dirs.append(d)
        self._apply(group, params, dirs)


# --------------------------------------------------------------------------------------------
# Delta momentum, eqs. 48–49
# --------------------------------------------------------------------------------------------
def delta_momentum_update(
    grad: Tensor, buf: Tensor, *, momentum: float, decay: float, normalize: bool = True
) -> tuple[Tensor, Tensor]:
    """Delta momentum (eq. 49): the momentum memory is trained with the l2 (delta) objective
    ||m g^T - P||^2, which adds a gradient-dependent decay. In gradient units:

        b' = b (mu I - decay * k^T k) + g,     direction b',   k = g / ||g||_F if normalize else g

    with ``grad``/``buf`` viewed as matrices [R, C] (vectors as one row). With
    ``normalize=True`` the decay matrix has eigenvalues in [mu - decay, mu], so it is stable for
    decay <= mu + 1; ``normalize=False, decay=1`` is eq. 49 as printed (m(alpha - g^T g)),
    whose scale depends on the gradient's. ``decay=0`` is SGD momentum. Returns
    ``(direction, new_buf)`` in the input's shape.
    """
    g, b = as_matrix(grad), as_matrix(buf)
    k = g / g.norm().clamp(min=1e-30) if normalize else g
    rows, cols = g.shape
    # b k^T k: pick the cheaper association ([R,R] or [C,C] intermediate).
    bkk = (b @ k.T) @ k if rows <= cols else b @ (k.T @ k)
    new = b.mul(momentum).sub_(bkk, alpha=decay).add_(g)
    new = new.reshape(buf.shape)
    return new, new


class DeltaMomentum(NestedOptimizer):
    """Delta momentum (eqs. 48–49): momentum whose memory is updated by the delta rule.

    Args:
        params: parameters or parameter groups (every tensor is handled; vectors are one row).
        lr: learning rate.
        momentum: mu, the data-independent forget gate (alpha of eq. 49).
        decay: strength of the gradient-dependent decay ``b k^T k``; 0 gives SGD momentum.
        normalize: use the unit-norm gradient k = g / ||g||_F in the decay (stable for any
            gradient scale) instead of g itself (eq. 49 literally).
        weight_decay: decoupled weight decay.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        momentum: float = 0.9,
        *,
        decay: float = 0.5,
        normalize: bool = True,
        weight_decay: float = 0.0,
        fallback_betas: tuple[float, float] = (0.9, 0.95),
        fallback_eps: float = 1e-8,
        foreach: bool = True,
    ) -> None:
        _check_common(lr, momentum)
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        defaults = dict(lr=lr, momentum=momentum, decay=decay, normalize=normalize,
                        weight_decay=weight_decay)  # fmt: skip
        super().__init__(params, defaults, fallback_betas=fallback_betas,
                         fallback_eps=fallback_eps, foreach=foreach)  # fmt: skip

    def _method_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        news = []
        for p, buf in zip(params, self._buffers(params)):
            d, _ = delta_momentum_update(p.grad, buf, momentum=group["momentum"],
                                         decay=group["decay"], normalize=group["normalize"])  # fmt: skip
            news.append(d)
        store(self.state, params, "momentum_buffer", news)
        self._apply(group, params, news)


# --------------------------------------------------------------------------------------------
# Feature-map momentum, eq. 51
# --------------------------------------------------------------------------------------------
def feature_map(g: Tensor, name: str, temperature: float = 1.0) -> Tensor:
    """phi(g) of eq. 51, element-wise and scale-free except ``identity``.

    ``identity``: g. ``sign``: sign(g). ``tanh``: tanh(g / (temperature * rms(g))), a soft sign.
    ``rms``: g / rms(g) (the gradient normalised to unit RMS).
    """
    if name == "identity":
        return g
    if name == "sign":
        return torch.sign(g)
    rms = g.pow(2).mean().sqrt().clamp(min=1e-30)
    if name == "tanh":
        return torch.tanh(g / (temperature * rms))
    if name == "rms":
        return g / rms
    raise ValueError(f"feature map {name!r} is not known; use one of {FEATURE_MAPS}")


class FeatureMapMomentum(NestedOptimizer):
    """Momentum over a feature map of the gradient (eq. 51): b' = mu b + phi(g), W -= lr b'.

    ``feature_map`` is one of ``identity`` (== SGD momentum), ``sign``, ``tanh`` (with
    ``temperature``) or ``rms``; ``ema`` and ``nesterov`` as in :func:`momentum_update`.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.9,
        *,
        feature_map: str = "tanh",
        temperature: float = 1.0,
        ema: bool = False,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        fallback_betas: tuple[float, float] = (0.9, 0.95),
        fallback_eps: float = 1e-8,
        foreach: bool = True,
    ) -> None:
        _check_common(lr, momentum)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map={feature_map!r}; use one of {FEATURE_MAPS}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        defaults = dict(lr=lr, momentum=momentum, feature_map=feature_map,
                        temperature=temperature, ema=ema, nesterov=nesterov,
                        weight_decay=weight_decay)  # fmt: skip
        super().__init__(params, defaults, fallback_betas=fallback_betas,
                         fallback_eps=fallback_eps, foreach=foreach)  # fmt: skip

    def _method_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        feats = [feature_map(p.grad, group["feature_map"], group["temperature"]) for p in params]
        self._apply(group, params, _momentum_step(self, group, params, feats))


# --------------------------------------------------------------------------------------------
# Non-linear output momentum, eq. 52 (Newton–Schulz output == Muon)
# --------------------------------------------------------------------------------------------
def output_map(
    xs: Sequence[Tensor],
    name: str,
    *,
    ns_steps: int = 5,
    ns_coefficients: Sequence[float] = NS_COEFFICIENTS,
    ns_eps: float = NS_EPS,
    ns_dtype: str | torch.dtype | None = None,
    batched: bool = True,
) -> list[Tensor]:
    """sigma of eq. 52 applied to each momentum read-out, returned in each input's dtype.

    ``newton-schulz`` (on the matrix view, tensors with >= 2 dims), ``sign``, ``tanh``,
    ``identity``.
    """
    if name == "identity":
        return list(xs)
    if name == "sign":
        return [torch.sign(x) for x in xs]
    if name == "tanh":
        return [torch.tanh(x) for x in xs]
    if name != "newton-schulz":
        raise ValueError(f"output map {name!r} is not known; use one of {OUTPUT_MAPS}")
    if not xs:
        return []
    dtype = resolve_ns_dtype(ns_dtype, xs[0].dtype)
    mats = [as_matrix(x) for x in xs]
    outs = newton_schulz_many(mats, ns_steps, ns_coefficients, ns_eps, dtype, batched=batched)
    return [o.reshape(x.shape).to(x.dtype) for o, x in zip(outs, xs)]


class NonlinearOutputMomentum(NestedOptimizer):
    """Momentum with a non-linear output (eq. 52): W <- W - lr s sigma(b'), b' = momentum of g.

    With ``output="newton-schulz"``, ``ema=True``, ``nesterov=True`` and ``ns_dtype="bfloat16"``
    this is ``torch.optim.Muon`` exactly (same coefficients, eps, shape factor ``s`` from
    ``adjust_lr_fn``, decoupled weight decay); the defaults below are torch's. Tensors with
    fewer than two dimensions go to the AdamW fallback group when sigma is Newton–Schulz.

    Args:
        params: parameters or parameter groups.
        lr, weight_decay, momentum, nesterov: as ``torch.optim.Muon``.
        output: sigma: ``newton-schulz``, ``sign``, ``tanh`` or ``identity``.
        ema: EMA (``lerp``) buffer as Muon, or SGD's sum buffer.
        ns_coefficients, ns_eps, ns_steps: the Newton–Schulz iteration.
        adjust_lr_fn: ``original`` (torch's default), ``match_rms_adamw`` or ``none``; only
            applied with the Newton–Schulz output.
        ns_dtype: dtype Newton–Schulz runs in; see :func:`resolve_ns_dtype`.
        foreach: foreach element-wise kernels and Newton–Schulz batched over equal shapes.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        *,
        output: str = "newton-schulz",
        ema: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        ns_eps: float = NS_EPS,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        ns_dtype: str | None = None,
        fallback_betas: tuple[float, float] = (0.9, 0.95),
        fallback_eps: float = 1e-8,
        foreach: bool = True,
    ) -> None:
        _check_common(lr, momentum)
        if output not in OUTPUT_MAPS:
            raise ValueError(f"output={output!r}; use one of {OUTPUT_MAPS}")
        if adjust_lr_fn is not None and adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r}; use one of {ADJUST_LR_FNS}")
        if not 0 <= ns_steps < 100:
            raise ValueError(f"ns_steps must be in [0, 100), got {ns_steps}")
        self._output = output
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        output=output, ema=ema, ns_coefficients=tuple(ns_coefficients),
                        ns_eps=ns_eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                        ns_dtype=ns_dtype)  # fmt: skip
        super().__init__(params, defaults, fallback_betas=fallback_betas,
                         fallback_eps=fallback_eps, foreach=foreach)  # fmt: skip

    def supports(self, p: Tensor) -> bool:
        return self._output != "newton-schulz" or p.ndim >= 2

    def _method_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        d = _momentum_step(self, group, params, [p.grad for p in params])
        out = output_map(d, group["output"], ns_steps=group["ns_steps"],
                         ns_coefficients=group["ns_coefficients"], ns_eps=group["ns_eps"],
                         ns_dtype=group["ns_dtype"], batched=group["foreach"])  # fmt: skip
        lrs = muon_lrs(group, params, scaled=group["output"] == "newton-schulz")
        self._apply(group, params, out, lrs)
