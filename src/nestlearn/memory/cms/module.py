"""The Continuum Memory System module: :class:`ContinuumMemory` (an FFN of a block), its levels
and its per-sequence state. Nested Learning (arXiv 2512.24695) section 7.1, eqs. 70-74; the modes
and options are :class:`~nestlearn.memory.cms.config.CMSConfig`'s.

Axis legend: B batch, T tokens, D width.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from nestlearn.memory.cms.config import CMSConfig
from nestlearn.ops.cms import CMSLevelState, chunk_cms_level, level_forward
from nestlearn.ops.recompute import DEFAULT_RECOMPUTE_GROUP
from nestlearn.utils.residual import mark_residual_out

__all__ = ["CMSLevel", "CMSState", "ContinuumMemory"]


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
        self.w_down = mark_residual_out(nn.Linear(hidden, dim, bias=False))
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

    supports_naive = False
    """No reference op to switch to (``nestlearn.layers.protocol.Mixer``)."""

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
    def flops_per_token(self, seq_len: int) -> int:
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
