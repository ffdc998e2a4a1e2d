"""Continuum Memory System (CMS): a chain of MLP levels updated at different frequencies.

Nested Learning (arXiv 2512.24695) section 7.1, eqs. 70-74. Level ``l`` is an MLP whose weights
change every ``C^(l)`` tokens (``C^(1) < ... < C^(K)``); the outer optimizer learns every
level's initial state (eq. 73). :class:`ContinuumMemory` has the house FFN signature, so Hope's
block is ``Block(dim, self_modifying_titans, cms)`` and Hope-Attention's
``Block(dim, CausalSelfAttention, cms)``. Design decisions, with equation numbers, are in
``docs/fidelity.md``; usage in ``docs/cms.md``.

Modes (``CMSConfig.mode``):

* ``"in_context"`` (default): per-sequence fast weights ``[B, ...]`` updated inside the forward
  pass by eq. 71. With ``objective="next"`` each level learns from a local next-input regression
  (chunk-parallel, no backward through the network); with ``objective="ntp"`` the updates use
  the true next-token-prediction gradient, computed by the model-level driver :func:`ntp_forward`.
* ``"outer"``: levels are ordinary parameters that the outer optimizer updates every ``k_l``
  steps with accumulated gradients (:func:`attach_outer_schedule`).
* ``"static"``: a plain MLP chain (frequency 0).

Axis legend: B batch, T tokens, D width, V vocabulary.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from nestlearn.ops.cms import CMSLevelState, chunk_cms_level, level_forward
from nestlearn.ops.recompute import DEFAULT_RECOMPUTE_GROUP, check_recompute_group
from nestlearn.utils.config import from_dict

logger = logging.getLogger(__name__)

__all__ = [
    "CMSConfig",
    "CMSState",
    "ContinuumMemory",
    "apply_outer_schedule",
    "attach_outer_schedule",
    "frozen_cms",
    "set_cms_frozen",
]

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


class CMSState(NamedTuple):
    """Per-sequence CMS state: one :class:`CMSLevelState` per level (fast weights, deferred
    inputs of the current chunk, partial gradient sums, nested anchors, position). Its size does
    not depend on the context length."""

    levels: tuple[CMSLevelState, ...]

    @property
    def position(self) -> int:
        return self.levels[0].position if self.levels else 0

    def detach(self) -> CMSState:
        return CMSState(tuple(s.detach() for s in self.levels))

    def to_dict(self) -> dict[str, Tensor]:
        """Flat ``name -> tensor`` mapping (e.g. for safetensors); ``from_dict`` inverts it."""
        out: dict[str, Tensor] = {}
        for i, s in enumerate(self.levels):
            out[f"l{i}.position"] = torch.tensor(s.position)
            for name in ("delta", "grad", "anchor", "anchor_grad", "pending"):
                val = getattr(s, name)
                if isinstance(val, tuple):
                    out[f"l{i}.{name}.0"], out[f"l{i}.{name}.1"] = val
                elif val is not None:
                    out[f"l{i}.{name}"] = val
        return {k: v.detach().contiguous() for k, v in out.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Tensor]) -> CMSState:
        def get(i: int, name: str) -> Any:
            if f"l{i}.{name}.0" in d:
                return (d[f"l{i}.{name}.0"], d[f"l{i}.{name}.1"])
            return d.get(f"l{i}.{name}")

        n = len({k.split(".")[0] for k in d})
        fields_ = ("delta", "grad", "pending", "anchor", "anchor_grad")
        return cls(tuple(CMSLevelState(*(get(i, f) for f in fields_), int(d[f"l{i}.position"]))
                         for i in range(n)))  # fmt: skip


class CMSLevel(nn.Module):
    """One level's meta-learned initial weights (names match ``SwiGLU``: ``w_gate``, ``w_up``,
    ``w_down``; ``w_in`` for 2-layer MLPs) and optional pre-norm gain."""

    def __init__(self, dim: int, hidden: int, activation: str, norm: bool, eps: float) -> None:
        super().__init__()
        self.activation, self.eps = activation, eps
        if activation == "swiglu":
            self.w_gate = nn.Linear(dim, hidden, bias=False)
            self.w_up = nn.Linear(dim, hidden, bias=False)
        else:
            self.w_in = nn.Linear(dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)
        self.norm_weight = nn.Parameter(torch.empty(dim)) if norm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Norm gain to 1 (the Linear weights are set by ``LanguageModel.init_weights``)."""
        if self.norm_weight is not None:
            nn.init.ones_(self.norm_weight)

    def weights(self) -> tuple[Tensor, Tensor]:
        """``(w_in [Hin, D], w_out [D, H])`` in the op layout (gate rows, then up rows)."""
        if self.activation == "swiglu":
            w_in = torch.cat([self.w_gate.weight, self.w_up.weight], dim=0)
        else:
            w_in = self.w_in.weight
        return w_in, self.w_down.weight

    def normed(self, u: Tensor) -> Tensor:
        """RMSNorm in float32 (float64 for float64 input), or identity."""
        if self.norm_weight is None:
            return u
        uf = u if u.dtype == torch.float64 else u.float()
        y = uf * torch.rsqrt(uf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.norm_weight.to(uf.dtype)).to(u.dtype)


class ContinuumMemory(nn.Module):
    """The CMS as an FFN: ``forward(x [B, T, D], *, state=None) -> (y [B, T, D], state)``.

    ``y`` is the chain's increment ``MLP^(K)(...MLP^(1)(x)) - x`` (eq. 70 with residual levels),
    so the block adds it to the residual stream like any FFN; one static SwiGLU level is the
    Transformer++ FFN. With ``state=None`` a fresh sequence is processed (in-context updates
    still happen inside the call) and ``None`` is returned; with a state from
    :meth:`init_state` the sequence continues, so one call equals chunk-aligned segments and
    prefill + token-by-token decode. Set ``frozen = True`` (or use :func:`frozen_cms`) to read
    without updating.
    """

    def __init__(self, dim: int, cfg: CMSConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or CMSConfig()
        self.cfg, self.dim = cfg, dim
        self.frozen = False
        if cfg.enabled:
            hidden, periods, mode = cfg.level_hidden(dim), cfg.periods, cfg.mode
        else:  # "w/o CMS": one static MLP with the summed width
            hidden, periods, mode = cfg.level_hidden(dim) * cfg.levels, (1,), "static"
        self.periods, self.mode, self.hidden = periods, mode, hidden
        norm = cfg.norm == "pre" and cfg.variant != "independent"
        self.levels = nn.ModuleList(
            CMSLevel(dim, hidden, cfg.activation, norm and i > 0, cfg.norm_eps)
            for i in range(len(periods))
        )
        K = len(periods)
        in_ctx = mode == "in_context"
        self.lr_logit = nn.Parameter(torch.empty(K)) if in_ctx and cfg.learn_lr else None
        self.register_buffer("lr_fixed", torch.empty(K), persistent=False)
        self.agg = nn.Parameter(torch.empty(K)) if cfg.variant == "independent" else None
        self._outer = mode == "outer"
        if self._outer:  # accumulated gradients live in the checkpoint, so resumes are exact
            self.register_buffer("outer_count", torch.zeros((), dtype=torch.long))
            for i, level in enumerate(self.levels):
                if cfg.every()[i] > 1:
                    for name, p in level.named_parameters():
                        level.register_buffer("acc_" + name.replace(".", "_"), torch.empty_like(p))
        self.reset_parameters()
        self.reset_buffers()

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """``rho = logit(lr / lr_max)`` per level; aggregation weights 1 (independent)."""
        with torch.no_grad():
            if self.lr_logit is not None:
                r = torch.tensor(self.cfg.lr) / self.cfg.lr_max
                self.lr_logit.copy_(torch.log(r / (1 - r)))
            if self.agg is not None:
                self.agg.fill_(1.0)

    def reset_buffers(self) -> None:
        with torch.no_grad():
            lr = self.cfg.lr if self.mode == "in_context" else (0.0,) * len(self.periods)
            self.lr_fixed.copy_(torch.tensor(lr[: len(self.periods)]))
            for name, buf in self.named_buffers():
                if name.endswith("outer_count") or ".acc_" in name:
                    buf.zero_()

    def set_memory_frozen(self, frozen: bool) -> None:
        """The freeze protocol of ``nestlearn.models.set_memory_frozen`` (sets ``frozen``)."""
        self.frozen = bool(frozen)

    @property
    def memory_frozen(self) -> bool:
        return self.frozen

    # --------------------------------------------------------------- forward
    def lrs(self) -> Tensor:
        """Per-token learning rate of each level, ``[K]`` (``eta^(l) = lr_l / C^(l)``)."""
        if self.lr_logit is not None:
            return self.cfg.lr_max * torch.sigmoid(self.lr_logit)
        return self.lr_fixed

    @property
    def in_context(self) -> bool:
        return self.mode == "in_context"

    @property
    def ntp_active(self) -> bool:
        """In-context levels that learn from the model's next-token gradient and are not frozen:
        the language model must then run through the exact driver (``nestlearn.models.ntp``),
        which supplies the gradients this module cannot compute on its own."""
        return self.mode == "in_context" and self.cfg.objective == "ntp" and not self.frozen

    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> CMSState | None:
        """A fresh per-sequence state (``None`` for the stateless static/outer modes)."""
        if not self.in_context:
            return None
        return CMSState(tuple(CMSLevelState() for _ in self.levels))

    def forward(
        self, x: Tensor, *, state: CMSState | None = None
    ) -> tuple[Tensor, CMSState | None]:
        """``x: [B, T, D]`` (already normed by the block) -> ``(y [B, T, D], state)``."""
        if not self.in_context:
            act = self.cfg.activation
            return self._chain(
                x, lambda i, n: level_forward(n, *self.levels[i].weights(), (), act)[0]
            ), state
        if self.ntp_active and (state is None or state.levels[0].delta is None):
            # only the language model's driver supplies the gradients (and the state it passes
            # always holds explicit fast weights); a direct call would silently never update
            raise ValueError(
                "a CMS with objective='ntp' learns from the language model's next-token "
                "gradient: call the LanguageModel (it runs the exact driver, "
                "nestlearn.models.ntp), freeze this module (set_cms_frozen), or use "
                "objective='next' for a module that learns on its own"
            )
        keep = state is not None
        old = state.levels if keep else (None,) * len(self.levels)
        new: list[CMSLevelState | None] = [None] * len(self.levels)
        lrs = self.lrs()
        eta = lrs / torch.tensor(self.periods, dtype=lrs.dtype, device=lrs.device)  # eq. 71's eta
        nested = self.cfg.variant == "nested"
        K = len(self.levels)
        group = self.cfg.recompute_group
        group = DEFAULT_RECOMPUTE_GROUP if group is None else group

        def run(i: int, n: Tensor) -> Tensor:
            y, new[i] = chunk_cms_level(
                n, *self.levels[i].weights(), eta[i], old[i],
                period=self.periods[i], activation=self.cfg.activation,
                objective="external" if self.cfg.objective == "ntp" else "next",
                reset_period=self.periods[i + 1] if nested and i < K - 1 else None,
                reset_lr=eta[i + 1] if nested and i < K - 1 else None,
                first_order=self.cfg.meta_grad == "first_order",
                update=not self.frozen, output_final_state=keep, retention=self.cfg.retention,
                recompute_group=group,
            )  # fmt: skip
            return y

        y = self._chain(x, run)
        return y, (CMSState(tuple(new)) if keep else None)  # type: ignore[arg-type]

    def _chain(self, x: Tensor, level_fn) -> Tensor:  # noqa: ANN001 - (index, input) -> branch
        """Eq. 70 (sequential/nested: ``u_l = u_{l-1} + MLP_l(norm(u_{l-1}))``) or eq. 74
        (independent: ``sum_l agg_l MLP_l(x)``); returns the summed branches."""
        y: Tensor | None = None
        u = x
        for i, level in enumerate(self.levels):
            if self.agg is not None:
                b = level_fn(i, x) * self.agg[i].to(x.dtype)
            else:
                b = level_fn(i, level.normed(u))
                if i < len(self.levels) - 1:
                    u = u + b
            y = b if y is None else y + b
        assert y is not None
        return y

    # ------------------------------------------------------------ accounting
    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Forward FLOPs per token, scaled so the skeleton's x3 gives the training cost.

        Static: ``2 P`` (``P`` = level matrix parameters). In-context adds the inner gradients
        (``2 (P + D H)`` per level); with ``meta_grad="full"`` the backward also runs through
        them (x3 overall), with ``"first_order"`` only through the reads.
        """
        D, H = self.dim, self.hidden
        P = (3 if self.cfg.activation == "swiglu" else 2) * D * H
        K = len(self.levels)
        if not self.in_context:
            return 2 * P * K
        fwd = 4 * P + 2 * D * H
        if self.cfg.meta_grad == "first_order":
            return K * (fwd + 4 * P) // 3
        return K * fwd

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"levels={len(self.periods)}, periods={self.periods}, hidden={self.hidden}, "
                f"mode={self.mode}, variant={c.variant}, objective={c.objective}")  # fmt: skip

    # ----------------------------------------------------------- outer mode
    @torch.no_grad()
    def outer_step(self) -> None:
        """Outer-schedule mode: hold back each level's gradient except every ``k_l`` steps.

        Call once per optimizer step after backward and clipping, before ``optimizer.step()``.
        Off-steps add the gradient to the level's accumulator and set ``p.grad = None`` (the
        optimizer skips the tensor: no update, no weight decay, no moment update); on-steps
        hand the accumulated sum (eq. 71's sum over steps) to the optimizer.
        """
        if not self._outer:
            return
        self.outer_count += 1
        step = int(self.outer_count)
        for level, k in zip(self.levels, self.cfg.every()):
            if k == 1:
                continue
            for name, p in level.named_parameters():
                acc = getattr(level, "acc_" + name.replace(".", "_"))
                if p.grad is not None:
                    acc.add_(p.grad)
                if step % k == 0:
                    p.grad = acc.clone()
                    acc.zero_()
                else:
                    p.grad = None


# ---------------------------------------------------------------- model utilities
def _cms_modules(model: nn.Module) -> Iterator[ContinuumMemory]:
    return (m for m in model.modules() if isinstance(m, ContinuumMemory))


def set_cms_frozen(model: nn.Module, frozen: bool = True) -> None:
    """Freeze (or unfreeze) the in-context updates of every CMS in ``model``.

    Frozen levels read with their current fast weights and never update; the finished terms of
    a chunk in progress are kept (applied at its boundary once unfrozen), tokens read while
    frozen add none.
    """
    for m in _cms_modules(model):
        m.frozen = frozen


@contextlib.contextmanager
def frozen_cms(model: nn.Module, frozen: bool = True) -> Iterator[None]:
    """Context manager form of :func:`set_cms_frozen`; restores each module's flag."""
    mods = list(_cms_modules(model))
    before = [m.frozen for m in mods]
    for m in mods:
        m.frozen = frozen
    try:
        yield
    finally:
        for m, f in zip(mods, before):
            m.frozen = f


def apply_outer_schedule(model: nn.Module) -> None:
    """Run :meth:`ContinuumMemory.outer_step` on every outer-mode CMS of ``model``."""
    for m in _cms_modules(model):
        m.outer_step()


def attach_outer_schedule(model: nn.Module, optimizer: torch.optim.Optimizer) -> Any:
    """Apply the outer schedule automatically at the start of every ``optimizer.step()``.

    Every training loop of nestlearn calls this once, right after building its optimizer (the
    trainer, ``nestlearn.studies.recall.fit``, the continual-learning loops, ``bench``), so
    ``cms.mode=outer`` acts wherever a model is trained. A loop of your own does the same::

        opt = torch.optim.AdamW(model.parameters())
        attach_outer_schedule(model, opt)

    Returns the hook handle (``.remove()`` detaches it), or ``None`` when ``model`` has no
    outer-mode CMS (nothing to do). Attaching the same modules to the same optimizer again
    returns the first handle: the schedule must advance once per step.
    """
    mods = [m for m in _cms_modules(model) if m.mode == "outer"]
    if not mods:
        return None
    hooks = optimizer.__dict__.setdefault("_nestlearn_outer_hooks", {})
    key = frozenset(id(m) for m in mods)
    old = hooks.get(key)
    if old is not None and old.id in optimizer._optimizer_step_pre_hooks:
        return old

    def hook(*_: Any) -> None:
        for m in mods:
            m.outer_step()

    hooks[key] = handle = optimizer.register_step_pre_hook(hook)
    return handle
