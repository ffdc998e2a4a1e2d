"""Optimizer configuration (the ``optim.*`` keys of a run config).

Flat fields; each optimizer reads the ones its docstring names. ``build_optimizer`` maps a
config to an optimizer (see ``build.py`` and docs/optimizers.md for the routing rule).
"""

from __future__ import annotations

from dataclasses import dataclass

OPTIMIZERS = (
    "adamw",
    "sgd",
    "muon",
    "m3",
    "m3-literal",
    "delta-momentum",
    "precond-momentum",
    "deep-momentum",
    "feature-momentum",
    "nonlinear-momentum",
    "delta-gd",
)
"""Registered names; every one except ``adamw`` updates hidden matrices with its own method
and everything else (embeddings, head, vectors) with the AdamW fallback group."""

_NS_DTYPES = ("auto", "param", "bfloat16", "float32", "float64")
_ADJUST = ("original", "match_rms_adamw", "none")
_PRECONDS = ("identity", "adam", "adagrad")
_FEATURES = ("identity", "sign", "tanh", "rms")
_OUTPUTS = ("newton-schulz", "sign", "tanh", "identity")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"optim.{key}={value!r} is not known; choose one of {', '.join(allowed)}")


@dataclass
class OptimConfig:
    name: str = "adamw"
    """Which optimizer: one of ``nestlearn.optim.config.OPTIMIZERS``."""
    lr: float = 3e-3
    """Peak learning rate (reached after warm-up, then cosine decay). For every optimizer but
    ``adamw`` this is the AdamW fallback group's rate, and the method's too unless
    ``matrix_lr`` is set."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices only (not norms, biases, embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (also the fallback group's). ``betas[1]`` is the second-moment decay of
    ``m3`` and ``precond-momentum``."""
    eps: float = 1e-8
    """AdamW epsilon; also the second-moment epsilon of ``m3`` and ``precond-momentum``."""

    matrix_lr: float | None = None
    """Learning rate of the matrices the method updates; ``None`` = ``lr``. Newton–Schulz
    methods with ``muon_adjust_lr=match_rms_adamw`` work at AdamW's rate; ``sgd``,
    ``delta-momentum``, ``deep-momentum``, ``feature-momentum`` and ``delta-gd`` usually
    need their own."""
    momentum: float = 0.95
    """Momentum mu (alpha of eqs. 33/47/49/50); beta1 of ``m3``."""
    nesterov: bool = True
    """Nesterov read-out for ``sgd``, ``muon``, ``nonlinear-momentum``, ``feature-momentum``,
    ``precond-momentum``."""
    ns_steps: int = 5
    """Newton–Schulz iterations (``muon``, ``m3``, ``m3-literal``, ``nonlinear-momentum``)."""
    ns_dtype: str = "auto"
    """Newton–Schulz precision: ``auto`` (bfloat16, float64 for float64 params), ``param``,
    ``bfloat16``, ``float32`` or ``float64``."""
    muon_adjust_lr: str = "match_rms_adamw"
    """Shape factor of Newton–Schulz updates: ``match_rms_adamw`` (0.2 sqrt(max(A, B)): AdamW's
    lr transfers), ``original`` (torch.optim.Muon's default) or ``none``."""
    m3_slow_every: int = 100
    """M3: the slow momentum's update period f (steps)."""
    m3_alpha: float = 0.5
    """M3: weight alpha of the slow momentum's output."""
    beta3: float = 0.9
    """M3: decay (stabilised) or sum coefficient (literal) of the slow momentum."""
    m3_precondition: bool = True
    """M3 stabilised: whiten by the second moment before Newton–Schulz."""
    delta_decay: float = 0.5
    """delta-momentum: strength of the gradient-dependent decay (eq. 49); 0 = SGD momentum."""
    delta_normalize: bool = True
    """delta-momentum: use the unit-norm gradient in the decay (False = eq. 49 literally)."""
    precond: str = "adam"
    """precond-momentum: preconditioner ``identity``, ``adam`` or ``adagrad``."""
    precond_apply_to: str = "grad"
    """precond-momentum: ``grad`` (eq. 47: P(g) stored) or ``momentum`` (P on the read-out =
    AdamW when ``precond=adam``)."""
    dmgd_hidden: int = 16
    """deep-momentum: hidden width of the memory MLP (0 = linear memory = SGD momentum)."""
    dmgd_objective: str = "dot"
    """deep-momentum: inner objective ``dot`` or ``l2``."""
    dmgd_inner_lr: float = 1.0
    """deep-momentum: step size of the memory's inner gradient step."""
    dmgd_key_lr: float = 0.01
    """deep-momentum: normalised step size of the memory's key map."""
    feature_map: str = "tanh"
    """feature-momentum: phi of eq. 51: ``identity``, ``sign``, ``tanh`` or ``rms``."""
    nonlinear_output: str = "newton-schulz"
    """nonlinear-momentum: sigma of eq. 52: ``newton-schulz``, ``sign``, ``tanh``, ``identity``."""
    dgd_decay: float | None = None
    """delta-gd: ``None`` = eq. 57's tied decay lr/(1+lr); a number = a of eq. 121."""
    fallback_patterns: tuple[str, ...] = ("embed", "head")
    """Matrices whose parameter name contains one of these go to the AdamW fallback group
    (Muon practice: embeddings and the LM head are not hidden matrices)."""

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.fallback_patterns = tuple(self.fallback_patterns)
        _choice("name", self.name, OPTIMIZERS)
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.matrix_lr is not None and not self.matrix_lr > 0:
            raise ValueError(f"optim.matrix_lr must be > 0 or null, got {self.matrix_lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"optim.momentum must be in [0, 1), got {self.momentum}; try 0.95")
        if not 0 <= self.ns_steps < 100:
            raise ValueError(f"optim.ns_steps must be in [0, 100), got {self.ns_steps}; try 5")
        _choice("ns_dtype", self.ns_dtype, _NS_DTYPES)
        _choice("muon_adjust_lr", self.muon_adjust_lr, _ADJUST)
        if self.m3_slow_every < 1:
            raise ValueError(
                f"optim.m3_slow_every must be >= 1 step, got {self.m3_slow_every}; try 100"
            )
        if self.m3_alpha < 0:
            raise ValueError(f"optim.m3_alpha must be >= 0, got {self.m3_alpha}")
        if not 0 <= self.beta3 < 1:
            raise ValueError(f"optim.beta3 must be in [0, 1), got {self.beta3}; try 0.9")
        if self.delta_decay < 0:
            raise ValueError(f"optim.delta_decay must be >= 0, got {self.delta_decay}")
        _choice("precond", self.precond, _PRECONDS)
        _choice("precond_apply_to", self.precond_apply_to, ("grad", "momentum"))
        if self.dmgd_hidden < 0:
            raise ValueError(f"optim.dmgd_hidden must be >= 0, got {self.dmgd_hidden}")
        _choice("dmgd_objective", self.dmgd_objective, ("dot", "l2"))
        if not self.dmgd_inner_lr > 0 or self.dmgd_key_lr < 0:
            raise ValueError(
                "optim.dmgd_inner_lr must be > 0 and optim.dmgd_key_lr >= 0, got "
                f"{self.dmgd_inner_lr} and {self.dmgd_key_lr}"
            )
        _choice("feature_map", self.feature_map, _FEATURES)
        _choice("nonlinear_output", self.nonlinear_output, _OUTPUTS)
        if self.dgd_decay is not None and self.dgd_decay < 0:
            raise ValueError(f"optim.dgd_decay must be >= 0 or null, got {self.dgd_decay}")
