"""State, memory forward, objectives, retention projections and input checks of the nested op.

Everything here is written once and used by both the per-token reference (``naive.py``) and the
chunked form (``chunk.py``), so the two differ only in how they schedule the same math.

Parameter layout: a memory's parameters are one flat tuple, weights of every layer (input side
first) then, with ``bias=True``, the biases of every layer. Per sequence and head:

* ``vector``: ``w: [D]`` (and ``b: [D]``), ``M(x) = w * x + b``;
* ``matrix`` / ``mlp`` layer ``l``: ``W_l: [o, i]`` (and ``b_l: [o]``), ``h_l = W_l z_l + b_l``,
  ``z_0 = x``, ``z_{l+1} = s(h_l)``; the branch is ``LN(h_{L-1})`` with ``norm='layernorm'``;
  ``M(x) = x + branch`` when residual.

Inside the ops the leading ``[B, H]`` axes are merged into ``G = B * H``.

Axis legend: B batch, T tokens, H heads, G = B * H, N tokens of a call or chunk, D / Dk / Dv dims.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.ops.common import check_per_token, check_values
from nestlearn.ops.nested.spec import MemorySpec

__all__ = [
    "NestedState",
    "autograd_capable",
    "activation_fn",
    "check_nested_inputs",
    "init_params",
    "memory_forward",
    "newton_schulz",
    "objective_loss",
    "project",
    "zeros_state",
]


class NestedState(NamedTuple):
    """Per-sequence state of a nested memory level (all tensors ``[B, H, ...]``).

    Attributes:
        params: the memory's parameters (weights, then biases; see the module docstring). Mid-chunk
            these are the in-chunk weights the next reads start from.
        mirror: ``lq`` / ``kl`` retention: the accumulator (``lq``) or logits (``kl``) whose
            projection the weights are at every chunk end; ``None`` otherwise.
        momentum: momentum buffers, one per parameter, or ``None``.
        anchor: parameters at the start of the unfinished chunk (the gradient point), or ``None``
            on a chunk boundary.
        offset: tokens of the unfinished chunk already consumed, ``0 <= offset < chunk_size``.
        pending: ``muon`` only: ``(decay, step)`` accumulated over the unfinished chunk,
            ``[B, H]`` each, applied at the chunk end.
    """

    params: tuple[Tensor, ...]
    mirror: tuple[Tensor, ...] | None = None
    momentum: tuple[Tensor, ...] | None = None
    anchor: tuple[Tensor, ...] | None = None
    offset: int = 0
    pending: tuple[Tensor, Tensor] | None = None

    def detach(self) -> NestedState:
        """Cut the autograd history (truncated backprop through time)."""
        return self._map(lambda t: t.detach())

    def to(self, dtype: torch.dtype) -> NestedState:
        """Cast every tensor to ``dtype`` (differentiable)."""
        return self._map(lambda t: t.to(dtype))

    def _map(self, fn: Callable[[Tensor], Tensor]) -> NestedState:
        def m(ts: tuple[Tensor, ...] | None) -> tuple[Tensor, ...] | None:
            return None if ts is None else tuple(fn(t) for t in ts)

        return NestedState(
            m(self.params), m(self.mirror), m(self.momentum), m(self.anchor),  # type: ignore[arg-type]
            self.offset, m(self.pending),  # type: ignore[arg-type]
        )  # fmt: skip


_F = TypeVar("_F", bound=Callable[..., Any])


def _plain(x: Any) -> Any:
    """A copy of every tensor in ``x`` (tuples, NamedTuples) made outside inference mode."""
    if isinstance(x, Tensor):
        return x.clone()
    if isinstance(x, tuple):
        items = [_plain(i) for i in x]
        return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
    return x


def autograd_capable(fn: _F) -> _F:
    """Run ``fn`` outside ``torch.inference_mode``: the inner gradients are taken by autograd,
    which inference tensors do not allow. Inputs are copied to ordinary tensors first (values and
    results are the same; only under inference mode does this cost a copy)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_inference_mode_enabled():
            return fn(*args, **kwargs)
        with torch.inference_mode(False), torch.no_grad():
            args = tuple(_plain(a) for a in args)
            kwargs = {k: _plain(v) for k, v in kwargs.items()}
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def param_shapes(spec: MemorySpec, dk: int, dv: int) -> list[tuple[int, ...]]:
    """Per-sequence, per-head shapes of ``params``: weights then biases."""
    shapes = spec.layer_shapes(dk, dv)
    if spec.bias:
        shapes = shapes + [(s[0],) for s in shapes]
    return shapes


def init_params(
    spec: MemorySpec, dk: int, dv: int, heads: int, *, generator: torch.Generator | None = None
) -> list[Tensor]:
    """Initial parameters ``[H, ...]`` (float64): the usual meta-learned ``M_0`` starting point.

    mlp: ``normal(0, 1/sqrt(d_in))`` (as the Titans memory, ``memory/neural_memory.py``), for
    ``lq`` the accumulator (``W = A / ||A||_q^{q-2}`` is then of the same scale), for ``kl``
    ``normal(0, 1)`` logits (random rows: uniform ones would keep every hidden unit identical);
    matrix / vector: zeros (an empty memory; uniform rows for ``kl``). Biases: zeros.
    """
    out = []
    n_w = spec.n_layers
    for j, shp in enumerate(param_shapes(spec, dk, dv)):
        if j < n_w and spec.memory == "mlp":
            # kl: unit-variance logits; uniform rows would make every hidden unit (and its
            # gradient) identical forever
            std = 1.0 if spec.retention == "kl" else shp[-1] ** -0.5
            t = torch.randn(heads, *shp, generator=generator, dtype=torch.float64)
            out.append(t * std)
        else:
            out.append(torch.zeros(heads, *shp, dtype=torch.float64))
    return out


def zeros_state(
    spec: MemorySpec,
    batch: int,
    heads: int,
    dk: int,
    dv: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> NestedState:
    """All-zero parameters (uniform rows for ``kl``), on a chunk boundary."""
    ps = tuple(
        torch.zeros(batch, heads, *s, dtype=dtype, device=device)
        for s in param_shapes(spec, dk, dv)
    )
    if spec.mirror:
        return NestedState(project(spec, ps), ps)
    return NestedState(ps)


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """The mlp memory's nonlinearity."""
    if name == "silu":
        return F.silu
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return torch.relu
    raise ValueError(f"activation must be one of silu, gelu, gelu_tanh, relu; got {name!r}")


def layer_norm(h: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """LayerNorm over the last axis, then the (per-head) affine if given."""
    out = F.layer_norm(h, h.shape[-1:], eps=eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def memory_forward(
    spec: MemorySpec,
    params: tuple[Tensor, ...] | list[Tensor],
    x: Tensor,
    norm: tuple[Tensor | None, Tensor | None] = (None, None),
    *,
    collect: bool = False,
    leaves: bool = False,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """``M(x)`` for per-sequence parameters.

    Args:
        params: ``[G, ...]`` per parameter (module docstring layout).
        x: ``[G, N, Dk]``.
        norm: per-``G`` LayerNorm affine ``([G, 1, Dv] or None, [G, 1, Dv] or None)``.
        collect: also return every layer's input ``z_l`` and pre-activation ``h_l``.
        leaves: make each ``h_l`` a node the caller can differentiate with respect to even under
            ``torch.no_grad`` (the inner gradient), see :func:`layer_grads`.

    Returns:
        ``(M(x) [G, N, Dv], zs, hs)`` (``zs``, ``hs`` empty unless ``collect``).
    """
    L = spec.n_layers
    ws, bs = list(params[:L]), (list(params[L:]) if spec.bias else [None] * L)
    act = activation_fn(spec.activation)
    z = x
    zs: list[Tensor] = []
    hs: list[Tensor] = []
    for li in range(L):
        w, b = ws[li], bs[li]
        if spec.memory == "vector":
            h = z * w.unsqueeze(-2)
        else:
            h = z @ w.mT
        if b is not None:
            h = h + b.unsqueeze(-2)
        if leaves and not h.requires_grad:
            h = h.requires_grad_()
        if collect:
            zs.append(z)
            hs.append(h)
        z = act(h) if li < L - 1 else h
    out = layer_norm(z, norm[0], norm[1], spec.norm_eps) if spec.norm == "layernorm" else z
    if spec.is_residual:
        out = x + out
    return out, zs, hs


def objective_loss(spec: MemorySpec, out: Tensor, target: Tensor, delta: Tensor | None) -> Tensor:
    """Per-token attentional bias ``scale * l(M(k), v)``: ``[G, N]`` from ``[G, N, Dv]``.

    ``delta``: ``[G, N]`` Huber radii (``huber`` only).
    """
    if spec.objective == "dot":
        loss = -(out * target).sum(-1)
    else:
        e = out - target
        if spec.objective == "l2":
            loss = e.pow(2).sum(-1)
        elif spec.objective == "lp":
            loss = e.abs().pow(spec.p).sum(-1)
        else:  # huber on the error norm: l2 inside the radius, linear (slope 2 delta) outside
            assert delta is not None
            sq = e.pow(2).sum(-1)
            norm = (sq + 1e-12).sqrt()  # finite gradient at e = 0 in the unused branch
            loss = torch.where(norm <= delta, sq, 2.0 * delta * norm - delta * delta)
    return loss * spec.scale if spec.scale != 1.0 else loss


def project(
    spec: MemorySpec, acc: tuple[Tensor, ...] | list[Tensor], *, batch_dims: int = 2
) -> tuple[Tensor, ...]:
    """Weights from the retention's accumulator (``lq``, ``kl``); identity otherwise.

    ``acc``: per parameter ``[B, H, ...]`` (``batch_dims=2``) or ``[G, ...]`` (``batch_dims=1``).

    * ``lq`` (Moneta, MIRAS eq. 24): ``W = A / (||A||_q^q + eps)^{(q - 2) / q}`` per parameter and
      head, the FTRL solution of an ``l_q`` retention (MIRAS §3-4).
    * ``kl`` (Memora, MIRAS eq. 27): ``W = softmax(Lambda)`` over each weight row's inputs. With
      ``Lambda_t = a_t Lambda_{t-1} - lr_t u_t`` this equals MIRAS' ``softmax(a_t log W_{t-1} -
      lr_t u_t)`` exactly (``log softmax`` differs from ``Lambda`` by a per-row constant, which
      softmax ignores).
    """
    if spec.retention == "lq":
        q = spec.q
        out = []
        for a in acc:
            dims = tuple(range(batch_dims, a.dim()))
            nq = a.abs().pow(q).sum(dims, keepdim=True)
            out.append(a * (nq + 1e-12).pow(-(q - 2.0) / q))
        return tuple(out)
    if spec.retention == "kl":
        return tuple(torch.softmax(a, dim=-1) for a in acc)
    return tuple(acc)


def newton_schulz(x: Tensor, steps: int) -> Tensor:
    """Approximate orthogonalisation ``U V^T`` of ``x = U S V^T`` (``[..., o, i]``), Muon's quintic
    iteration (Jordan et al. 2024; ATLAS's memory optimizer). Differentiable."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = x.shape[-2] > x.shape[-1]
    y = x.mT if tall else x
    y = y / (y.pow(2).sum((-2, -1), keepdim=True).sqrt() + 1e-7)
    for _ in range(steps):
        A = y @ y.mT
        y = a * y + (b * A + c * (A @ A)) @ y
    return y.mT if tall else y


def check_nested_inputs(
    spec: MemorySpec,
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    retain: Tensor | None,
    momentum: Tensor | None,
    delta: Tensor | None,
    state: NestedState | None,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
) -> None:
    """Validate shapes and which inputs the spec needs; ``ValueError`` names the value and the fix."""
    if k.dim() != 4 or v.dim() != 4 or (q is not None and q.shape != k.shape):
        qs = None if q is None else tuple(q.shape)
        raise ValueError(
            f"q, k must be [B, T, H, Dk] and v [B, T, H, Dv]; got {qs}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    B, T, H, Dk = k.shape
    check_values(v, B, T, H, "Dv")
    spec.layer_shapes(Dk, v.shape[-1])  # raises on Dk != Dv for residual / vector memories
    needs = {
        "lr": True,
        "retain": spec.retention == "l2" or None,
        "momentum": spec.momentum,
        "delta": spec.objective == "huber",
    }
    why = {
        "retain": "retention='none' has no retention gate; drop retain or set retention='l2'",
        "momentum": "spec.momentum is False; drop the momentum gate or set momentum=True",
        "delta": "only objective='huber' has a radius; drop delta or set objective='huber'",
    }
    for name, g in (("lr", lr), ("retain", retain), ("momentum", momentum), ("delta", delta)):
        need = needs[name]
        if g is None:
            if need is True:
                raise ValueError(f"{name} [B, T, H] is required by this spec ({spec.describe()})")
            continue
        if need is False or (name == "retain" and spec.retention == "none"):
            raise ValueError(f"{name} was given but {why[name]}")
        check_per_token((B, T, H), **{name: g})
    for name, t in (("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        if t is None:
            continue
        if spec.norm != "layernorm":
            raise ValueError(f"{name} was given but spec.norm is 'none'; set norm='layernorm'")
        if t.shape != (H, v.shape[-1]):
            raise ValueError(f"{name} must be [H, Dv] = {(H, v.shape[-1])}, got {tuple(t.shape)}")
    if state is None:
        return
    shapes = param_shapes(spec, Dk, v.shape[-1])
    if len(state.params) != len(shapes):
        raise ValueError(
            f"state.params has {len(state.params)} tensors, this spec needs {len(shapes)} "
            f"({spec.describe()})"
        )
    for i, (p, s) in enumerate(zip(state.params, shapes)):
        if tuple(p.shape) != (B, H, *s):
            raise ValueError(f"state.params[{i}] must be {(B, H, *s)}, got {tuple(p.shape)}")
    if spec.mirror != (state.mirror is not None):
        raise ValueError(
            f"state.mirror must be {'given' if spec.mirror else 'None'} for "
            f"retention={spec.retention!r}; build the state with zeros_state / the mixer"
        )
    if not 0 <= state.offset < spec.chunk_size:
        raise ValueError(
            f"state.offset must be in [0, chunk_size={spec.chunk_size}), got {state.offset}; "
            "thread states only between calls with the same spec"
        )
    if (state.offset > 0) != (state.anchor is not None):
        raise ValueError("state.anchor must be given exactly when state.offset > 0")
