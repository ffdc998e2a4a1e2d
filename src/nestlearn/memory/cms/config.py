"""Options of the Continuum Memory System: :class:`CMSConfig` (the ``cms`` section of a Hope
family's ``model.mixer``), validated once, with every field documented here (docs/cms.md)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from nestlearn.ops.recompute import check_recompute_group
from nestlearn.utils.config import from_dict

__all__ = ["DEFAULT_RETENTION", "CMSConfig"]

DEFAULT_RETENTION = 0.1
"""``cms.retention`` of in-context sequential/independent levels when not given (CMS-12)."""

_CHOICES = {
    "activation": ("swiglu", "gelu", "silu", "relu"),
    "variant": ("sequential", "nested", "independent"),
    "mode": ("in_context", "outer", "static"),
    "objective": ("next", "ntp"),
    "norm": ("pre", "none"),
    "meta_grad": ("full", "first_order"),
}


@dataclass
class CMSConfig:
    """Options of a :class:`ContinuumMemory` (the ``cms`` section of a Hope family's options)."""

    enabled: bool = True
    """``False`` is Table 6's "w/o CMS" ablation: one static MLP whose hidden width is the sum of
    the levels' (same parameter count)."""
    periods: tuple[int, ...] = (16, 64, 128)
    """Chunk size ``C^(l)`` of each level in tokens, fastest first, strictly increasing (eq. 71).
    ``K = len(periods)`` levels. The defaults suit the tiny presets (training length 256): every
    level, the slowest included, updates inside each training sequence, so every learning rate
    is meta-trained; the fastest period amortises the per-chunk fast-weight traffic (cost grows
    like ``1 / C^(1)``). See docs/cms.md for the measured trade-off."""
    hidden_mult: float | None = None
    """Hidden width of each level as a multiple of ``dim`` (rounded up to a multiple of 16).
    ``None`` splits the Transformer++ FFN width (``8/3 dim`` rounded up to 64) evenly over the
    levels, so a CMS has about the parameters of the FFN it replaces."""
    activation: str = "swiglu"
    """Level MLP: ``"swiglu"`` (the Transformer++ FFN, so pretrained MLPs drop in, section 7.3)
    or a 2-layer MLP with ``"gelu"``, ``"silu"`` or ``"relu"``."""
    variant: str = "sequential"
    """``"sequential"`` chain (eq. 73), ``"nested"`` (a level is re-initialised from a state
    kept by the slower level at the end of the slower level's chunk, eq. 72) or
    ``"independent"`` (parallel levels on the same input, learned weighted sum, eq. 74)."""
    mode: str = "in_context"
    """``"in_context"``, ``"outer"`` or ``"static"`` (see the module docstring)."""
    objective: str = "next"
    """In-context error signal: ``"next"`` = gradient of the local next-input regression
    ``1/2 ||MLP(x_t) - x_{t+1}||^2`` (default, chunk-parallel); ``"ntp"`` = gradient of the
    model's next-token loss (exact eq. 71): every call of the language model then runs through
    the driver ``nestlearn.models.ntp`` (docs/cms.md, cost included). Needs
    ``mode="in_context"``."""
    lr: float | tuple[float, ...] = 0.001
    """Initial per-token inner learning rate of each level (one value or one per level). The
    step of eq. 71 is ``eta^(l) = lr / C^(l)`` times the chunk's *sum* of gradients. Measured on a
    d=64 LM: 1e-3 trains like the static chain, 1e-2 hurts (first-order) or diverges (full)."""
    lr_max: float = 0.01
    """Bound of a learned ``lr``: ``lr = lr_max * sigmoid(rho)`` with ``rho`` a parameter. It
    keeps the inner gradient descent in its stable range (a too large step diverges)."""
    learn_lr: bool = True
    """Learn each level's ``lr`` with the outer optimizer; ``False`` keeps it fixed."""
    norm: str = "pre"
    """``"pre"``: RMSNorm (learned gain) before every level but the first (the block's FFN norm
    is the first level's); ``"none"``: no norms inside the chain."""
    meta_grad: str = "first_order"
    """``"first_order"``: the inner gradients are constants for the outer loss, whose gradient
    still reaches the initial states through every chunk (``W_c = W_0 + Delta_c``) and the
    learning rates through ``Delta_c`` (1.7x cheaper, measured); ``"full"``: back-propagate
    through the unrolled inner updates (exact meta-gradient of eq. 73)."""
    outer_every: tuple[int, ...] | None = None
    """``mode="outer"``: optimizer steps between updates of each level; ``None`` =
    ``C^(l) / C^(1)`` (rounded)."""
    norm_eps: float = 1e-6
    """Epsilon of the level norms."""
    retention: float | None = None
    """Fraction of each level's fast-weight offset ``Delta = W - W_0`` removed at each of its
    chunk boundaries, before the chunk's step: ``Delta' = (1 - r) Delta - eta sum grad``.
    ``0`` is eq. 71 as written; ``r > 0`` keeps a long stream's fast weights near the
    meta-learned ``W_0`` (docs/fidelity.md CMS-12). ``None`` = :data:`DEFAULT_RETENTION` for
    in-context levels of the sequential and independent variants, 0 otherwise (the nested
    variant restarts each level from its anchor instead and refuses ``r > 0``)."""
    recompute_group: int | None = None
    """Chunk-group recompute of the in-context levels (``nestlearn.ops.recompute``): in
    training each level's chunk loop runs in checkpointed groups of this many chunks, so
    backward keeps one fast-weight snapshot per group instead of one per chunk and re-runs each
    group (same numbers; about one more forward of the level). ``0`` keeps every chunk's
    tensors. ``None``: the block's ``model.mixer.recompute_group`` in the Hope families, else
    8. Needs ``mode="in_context"``."""

    def __post_init__(self) -> None:
        check_recompute_group(self.recompute_group, "cms.recompute_group")
        if self.recompute_group and (self.mode != "in_context" or not self.enabled):
            raise ValueError(
                f"cms.recompute_group={self.recompute_group} acts on in-context levels, but "
                f"cms.mode={self.mode!r}, cms.enabled={self.enabled} has none; drop "
                "cms.recompute_group or set it to 0"
            )
        self.periods = tuple(int(p) for p in self.periods)
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"cms.{key}={getattr(self, key)!r} is not known; choose one of {allowed}"
                )
        if not self.periods or any(p < 1 for p in self.periods):
            raise ValueError(f"cms.periods must be positive token counts, got {self.periods}")
        if any(b <= a for a, b in zip(self.periods, self.periods[1:])):
            raise ValueError(
                f"cms.periods must increase strictly (fastest level first), got {self.periods}; "
                f"try {tuple(sorted(set(self.periods)))}"
            )
        if self.variant == "nested" and any(b % a for a, b in zip(self.periods, self.periods[1:])):
            raise ValueError(
                f"cms.variant='nested' needs each period to divide the next, got {self.periods}; "
                "try powers of a common factor such as (16, 64, 256)"
            )
        K = len(self.periods)
        lr = (self.lr,) * K if isinstance(self.lr, (int, float)) else tuple(self.lr)
        if len(lr) != K:
            raise ValueError(f"cms.lr has {len(lr)} values for {K} levels; give one or {K}")
        self.lr = tuple(float(v) for v in lr)
        if any(v < 0 for v in self.lr):
            raise ValueError(f"cms.lr must be >= 0, got {self.lr}")
        if self.learn_lr and not all(0 < v < self.lr_max for v in self.lr):
            raise ValueError(
                f"a learned cms.lr must lie strictly between 0 and lr_max={self.lr_max}, got "
                f"{self.lr}; raise cms.lr_max or set cms.learn_lr=false (needed for lr = 0)"
            )
        if self.hidden_mult is not None and self.hidden_mult <= 0:
            raise ValueError(f"cms.hidden_mult must be positive or null, got {self.hidden_mult}")
        if self.objective == "ntp" and not self.enabled:
            raise ValueError(
                "cms.objective='ntp' has no effect with cms.enabled=false (one static MLP); "
                "drop cms.objective or enable the CMS"
            )
        if self.objective == "ntp" and self.mode != "in_context":
            raise ValueError(
                f"cms.objective='ntp' is an in-context error signal, but cms.mode={self.mode!r} "
                "has no in-context updates; set cms.mode=in_context or drop cms.objective"
            )
        if self.retention is None:
            auto = self.mode == "in_context" and self.variant != "nested" and self.enabled
            self.retention = DEFAULT_RETENTION if auto else 0.0
        self.retention = float(self.retention)
        if not 0.0 <= self.retention < 1.0:
            raise ValueError(f"cms.retention must be in [0, 1), got {self.retention}")
        if self.retention and (self.variant == "nested" or self.mode != "in_context"):
            raise ValueError(
                f"cms.retention={self.retention} acts on in-context levels of the sequential or "
                f"independent variant (got variant={self.variant!r}, mode={self.mode!r}); the "
                "nested variant restarts each level from its anchor instead: set retention=0"
            )
        if self.outer_every is not None and self.mode != "outer":
            raise ValueError(
                f"cms.outer_every={tuple(self.outer_every)} only applies to cms.mode='outer' "
                f"(got {self.mode!r}); set cms.mode=outer or drop cms.outer_every"
            )
        if self.outer_every is not None:
            self.outer_every = tuple(int(k) for k in self.outer_every)
            if len(self.outer_every) != K or any(k < 1 for k in self.outer_every):
                raise ValueError(
                    f"cms.outer_every needs {K} positive step counts, got {self.outer_every}"
                )

    @property
    def levels(self) -> int:
        """Number of levels ``K``."""
        return len(self.periods)

    def level_hidden(self, dim: int) -> int:
        """Hidden width of one level for model width ``dim``."""
        if self.hidden_mult is not None:
            return _round_up(self.hidden_mult * dim, 16)
        return _round_up(_round_up(8 * dim / 3, 64) / self.levels, 16)

    def every(self) -> tuple[int, ...]:
        """Outer-mode update interval of each level in optimizer steps."""
        if self.outer_every is not None:
            return self.outer_every
        return tuple(max(1, round(p / self.periods[0])) for p in self.periods)

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> CMSConfig:
        """Build from a mapping (e.g. YAML), naming unknown keys."""
        return from_dict(cls, dict(options or {}), "cms.", what="cms options")

    @classmethod
    def for_dim(cls, options: dict[str, Any] | None, dim: int) -> CMSConfig:
        """:meth:`from_dict` with the in-context rates scaled to the model width when not given.

        The inner step's stable range shrinks with the level's input energy, ``||x||^2 ~ dim``
        after the RMSNorm (CMS-11 in docs/fidelity.md): ``lr = 0.064 / dim`` (1e-3 at d = 64,
        where the rate was measured, 2.5e-4 at d = 256) and ``lr_max = 4 lr``. An explicit
        ``lr`` or ``lr_max`` is kept as given.
        """
        options = dict(options or {})
        if "lr" not in options:
            options["lr"] = 0.064 / dim
            options.setdefault("lr_max", 4 * options["lr"])
        return cls.from_dict(options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _round_up(x: float, m: int) -> int:
    return int(math.ceil(x / m) * m)
