"""``MemorySpec``: one level of a nested system as a point on the four MIRAS axes.

MIRAS (Behrouz et al. 2025, arXiv 2504.13173; Nested Learning arXiv 2512.24695 §5, digest §1.6 and
§8.2) describes every sequence model's memory by four choices, plus (Nested Learning §3.2) how often
the level updates:

=================== ================================================================================
axis                choices here
=================== ================================================================================
memory              ``vector`` (``M(x) = w * x``), ``matrix`` (``M(x) = W x``), ``mlp`` (``depth``
                    layers); optional inner biases, a LayerNorm on the branch and a residual
                    ``x + branch(x)`` (TTT §2.7, MIRAS ``x + LN(W_1 s(W_2 x))``)
attentional bias    ``dot`` ``-<M(k), v>``, ``l2`` ``||M(k) - v||^2``, ``lp`` ``||M(k) - v||_p^p``,
                    ``huber`` (``||e||^2`` inside radius ``delta_t``, ``2 delta_t ||e|| - delta_t^2``
                    outside), times ``scale``; target ``v`` or the self-generated ``M(v)`` (NL eq. 83)
retention           ``none``; ``l2`` (decay ``a_t W``); ``lq`` (``W = A / ||A||_q^{q-2}``, Moneta);
                    ``kl`` (``W = softmax(Lambda)`` per output row, Memora)
learning algorithm  ``gd``; ``dgd`` (Delta GD, NL eq. 57/88); ``muon`` (Newton-Schulz of the
                    momentum, ATLAS); ``momentum=True`` adds heavy-ball momentum
frequency           ``chunk_size`` ``C``: gradients inside a chunk are taken at its starting weights;
                    ``read`` says what the tokens of a chunk read: ``after`` / ``before`` their own
                    write (exact per token), or ``chunk`` (only the weights of the last chunk end:
                    the level updates once every ``C`` tokens, NL's update frequency ``1 / C``)
=================== ================================================================================

A spec is plain data (YAML-able via :meth:`MemorySpec.to_dict`); invalid combinations raise a
``ValueError`` that names the bad value and a fix. The op that runs a spec is
:func:`nestlearn.ops.nested.nested_memory`; the known models as points of this space are in
:mod:`nestlearn.nested` and ``docs/nested.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["ACTIVATIONS", "MemorySpec"]

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")
_CHOICES = {
    "memory": ("vector", "matrix", "mlp"),
    "objective": ("dot", "l2", "lp", "huber"),
    "target": ("value", "self"),
    "retention": ("none", "l2", "lq", "kl"),
    "algorithm": ("gd", "dgd", "muon"),
    "read": ("after", "before", "chunk"),
    "norm": ("none", "layernorm"),
    "activation": ACTIVATIONS,
}


@dataclass(frozen=True)
class MemorySpec:
    """A memory level: architecture, attentional bias, retention, learning algorithm, frequency."""

    # ---------------------------------------------------------------- memory architecture
    memory: str = "mlp"
    """``vector``, ``matrix`` or ``mlp``."""
    depth: int | None = None
    """Layers of an ``mlp`` memory (>= 2; ``None`` = 2); ``vector`` / ``matrix`` have one."""
    expansion: float = 1.0
    """``mlp`` hidden width as a multiple of the key dim."""
    activation: str = "silu"
    """``mlp`` nonlinearity: silu, gelu, gelu_tanh (TTT-MLP) or relu."""
    residual: bool | None = None
    """``M(x) = x + branch(x)``; ``None`` = True for ``mlp``, False otherwise. Needs Dk == Dv."""
    bias: bool = False
    """Inner biases in every layer (TTT)."""
    norm: str = "none"
    """``layernorm`` on the branch before the residual (TTT, MIRAS); affine weights, if any, are
    inputs of the op (``norm_weight``, ``norm_bias``)."""
    norm_eps: float = 1e-6
    """LayerNorm epsilon."""
    # ---------------------------------------------------------------- attentional bias
    objective: str = "l2"
    """``dot``, ``l2``, ``lp`` or ``huber`` (the inner loss on ``e = M(k) - v``)."""
    p: float = 3.0
    """Exponent of ``lp`` (>= 1; MIRAS Moneta uses 3)."""
    scale: float = 1.0
    """Multiplies the objective (TTT and DeltaNet use 1/2)."""
    target: str = "value"
    """``value``: regress ``v_t``; ``self``: the self-generated ``M_{W^g}(v_t)`` (NL eq. 83, MLPs)."""
    # ---------------------------------------------------------------- retention
    retention: str = "l2"
    """``none``, ``l2`` (decay), ``lq`` (normalised accumulator) or ``kl`` (softmax of logits)."""
    q: float = 4.0
    """Exponent of ``lq`` (> 2; MIRAS Moneta uses 4)."""
    # ---------------------------------------------------------------- learning algorithm
    algorithm: str = "gd"
    """``gd``, ``dgd`` (Delta GD) or ``muon`` (Newton-Schulz-orthogonalised momentum)."""
    momentum: bool = False
    """Heavy-ball momentum ``S_t = m_t S_{t-1} - lr_t u_t`` (needs the ``momentum`` gate input)."""
    ns_steps: int = 5
    """Newton-Schulz iterations of ``muon``."""
    # ---------------------------------------------------------------- frequency
    chunk_size: int = 16
    """Tokens per chunk; 1 is the exact per-token recurrence."""
    read: str = "after"
    """``after`` / ``before`` the token's own write, or ``chunk`` (the last chunk end's weights)."""
    # ---------------------------------------------------------------- pass-through
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Extra keyword options for the dedicated op that runs this spec (e.g. a new option of
    ``chunk_titans``); the generic path refuses any, so nothing is silently ignored."""

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            val = getattr(self, name)
            if val not in choices:
                raise ValueError(f"MemorySpec.{name}={val!r} is not one of {', '.join(choices)}")
        self._check_numbers()
        self._check_combinations()

    def _check_numbers(self) -> None:
        if self.memory == "mlp" and self.depth is not None and self.depth < 2:
            raise ValueError(
                f"MemorySpec.depth={self.depth}: an mlp memory needs depth >= 2; "
                "use memory='matrix' for one layer"
            )
        if self.memory != "mlp" and self.depth not in (None, 1):
            raise ValueError(
                f"MemorySpec.depth={self.depth} only applies to memory='mlp' (a {self.memory} "
                "memory has one layer); drop depth or use memory='mlp'"
            )
        if not self.expansion > 0:
            raise ValueError(f"MemorySpec.expansion must be > 0, got {self.expansion}; try 1.0")
        if self.chunk_size < 1:
            raise ValueError(f"MemorySpec.chunk_size must be >= 1, got {self.chunk_size}; try 16")
        if self.objective == "lp" and not self.p >= 1:
            raise ValueError(f"MemorySpec.p must be >= 1 for objective='lp', got {self.p}; try 3")
        if self.retention == "lq" and not self.q > 2:
            raise ValueError(
                f"MemorySpec.q must be > 2 for retention='lq', got {self.q}; try 4 "
                "(q = 2 is plain l2 retention)"
            )
        if not self.scale > 0:
            raise ValueError(f"MemorySpec.scale must be > 0, got {self.scale}; try 1.0")
        if self.ns_steps < 1:
            raise ValueError(f"MemorySpec.ns_steps must be >= 1, got {self.ns_steps}; try 5")
        if not self.norm_eps > 0:
            raise ValueError(f"MemorySpec.norm_eps must be > 0, got {self.norm_eps}")

    def _check_combinations(self) -> None:
        if self.target == "self" and self.memory != "mlp":
            raise ValueError(
                f"target='self' needs memory='mlp' (got {self.memory!r}): a linear memory's "
                "self-generated value makes the update quadratic in M; use target='value'"
            )
        if self.algorithm == "dgd":
            if self.memory == "vector":
                raise ValueError(
                    "algorithm='dgd' decays W along k k^T, which needs a matrix or mlp memory; "
                    "use memory='matrix' or algorithm='gd'"
                )
            if self.bias:
                raise ValueError("algorithm='dgd' with bias=True is not defined; set bias=False")
            if self.retention in ("lq", "kl"):
                raise ValueError(
                    f"algorithm='dgd' with retention={self.retention!r} is not defined (the DGD "
                    "decay acts on W, the retention on its accumulator); use retention='l2' or "
                    "algorithm='gd'"
                )
        if self.algorithm == "muon":
            if self.memory == "vector":
                raise ValueError(
                    "algorithm='muon' orthogonalises weight matrices; use memory='matrix' or 'mlp'"
                )
            if self.read != "chunk":
                raise ValueError(
                    f"algorithm='muon' applies one Newton-Schulz step per chunk, so its tokens "
                    f"read the weights of the last chunk end: set read='chunk' (got {self.read!r})"
                )
            if not self.momentum:
                raise ValueError(
                    "algorithm='muon' orthogonalises the momentum buffer; set momentum=True"
                )
            if self.bias:
                raise ValueError("algorithm='muon' with bias=True is not defined; set bias=False")
            if self.retention in ("lq", "kl"):
                raise ValueError(
                    f"algorithm='muon' with retention={self.retention!r} is not defined; use "
                    "retention='l2' or 'none'"
                )
        if self.retention in ("lq", "kl") and self.read == "after":
            raise ValueError(
                f"retention={self.retention!r} projects the weights at chunk ends only, so a read "
                "right after a token's own write would see an unprojected weight even at "
                "chunk_size=1; use read='before' (exact per token at chunk_size=1) or 'chunk'"
            )
        if self.retention == "kl" and self.bias:
            raise ValueError(
                "retention='kl' normalises weight rows; a bias has none: set bias=False"
            )
        if self.options and not isinstance(self.options, dict):
            raise ValueError(f"MemorySpec.options must be a dict, got {type(self.options)}")

    # ------------------------------------------------------------------ helpers
    @property
    def is_residual(self) -> bool:
        return self.memory == "mlp" if self.residual is None else bool(self.residual)

    @property
    def n_layers(self) -> int:
        return (self.depth or 2) if self.memory == "mlp" else 1

    @property
    def mirror(self) -> bool:
        """Whether the state keeps an accumulator that the weights are a projection of."""
        return self.retention in ("lq", "kl")

    def layer_shapes(self, dk: int, dv: int) -> list[tuple[int, ...]]:
        """Weight shapes, input side first: ``(out, in)`` per layer, or ``(D,)`` for a vector."""
        if self.is_residual and dk != dv:
            raise ValueError(
                f"a residual memory needs Dk == Dv, got Dk={dk}, Dv={dv}; set residual=False"
            )
        if self.memory == "vector":
            if dk != dv:
                raise ValueError(f"a vector memory maps D -> D, got Dk={dk}, Dv={dv}")
            return [(dk,)]
        if self.memory == "matrix":
            return [(dv, dk)]
        hid = max(1, round(dk * self.expansion))
        return [(hid, dk)] + [(hid, hid)] * (self.n_layers - 2) + [(dv, hid)]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for YAML recipes and ``model.mixer``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemorySpec:
        """Build from a mapping; unknown keys fail listing the known ones."""
        known = {f.name for f in fields(cls)}
        bad = sorted(set(data) - known)
        if bad:
            raise ValueError(f"unknown MemorySpec keys {bad}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def describe(self) -> str:
        """One line: ``mlp(2, x1.0, silu) | l2 | l2 | gd+momentum | C=16 read=after``."""
        mem = self.memory
        if mem == "mlp":
            mem += f"({self.n_layers}, x{self.expansion:g}, {self.activation})"
        extras = [s for s, on in (("bias", self.bias), ("ln", self.norm == "layernorm"),
                                  ("res", self.is_residual)) if on]  # fmt: skip
        if extras:
            mem += "+" + "+".join(extras)
        obj = self.objective + (f"(p={self.p:g})" if self.objective == "lp" else "")
        if self.target == "self":
            obj += " self-target"
        ret = self.retention + (f"(q={self.q:g})" if self.retention == "lq" else "")
        alg = self.algorithm + ("+momentum" if self.momentum else "")
        return f"{mem} | {obj} | {ret} | {alg} | C={self.chunk_size} read={self.read}"
