"""Ad-hoc level stacking (arXiv 2512.24695, section 7.3): pretrained MLPs become CMS levels.

The paper initialises each CMS block from a pretrained model's MLP, ``MLP^(f_i)_0 =
MLP_pretrained_i``, then lets it learn by eq. 71; with the level learning rates at 0 the
pretrained blocks are used unchanged. :func:`stack_levels` applies that to a ``transformer``
model:

* block ``l``'s SwiGLU FFN becomes a one-level :class:`~nestlearn.memory.cms.ContinuumMemory`
  whose initial state (the meta-learned ``W_0`` of eq. 73) is that MLP's weights, bit for bit;
* the level's update period is ``periods[l % K]`` (cyclic over depth), so every run of ``K``
  consecutive blocks holds one level of each frequency, fastest first: the chain of eq. 70
  read along depth, with attention between its levels.

With ``lr = 0`` the fast weights never move and the converted model computes exactly the
original's logits (tested bit for bit). Why this mapping and not ``K`` pretrained MLPs chained
inside one block: ``docs/fidelity.md``, section "Ad-hoc level stacking (§7.3)".
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import torch

from nestlearn.layers.ffn import SwiGLU
from nestlearn.memory.cms import CMSConfig
from nestlearn.models import LanguageModel, ModelConfig, build_model

logger = logging.getLogger(__name__)

__all__ = ["layer_periods", "stack_levels", "stacked_config"]


def layer_periods(n_layers: int, periods: Sequence[int]) -> list[int]:
    """The update period of each block: ``periods[l % K]`` (cyclic over depth)."""
    periods = [int(p) for p in periods]
    if not periods or any(p < 1 for p in periods):
        raise ValueError(f"periods must be positive token counts, got {periods}")
    return [periods[i % len(periods)] for i in range(n_layers)]


def stacked_config(
    cfg: ModelConfig,
    periods: Sequence[int] = (64, 256, 1024),
    *,
    lr: float = 0.0,
    learn_lr: bool | None = None,
    lr_max: float = 0.01,
    meta_grad: str = "first_order",
    objective: str = "next",
    retention: float = 0.0,
) -> ModelConfig:
    """The ``transformer-cms`` config that holds ``cfg``'s weights with CMS levels.

    Args:
        cfg: a ``transformer`` family config.
        periods: update periods in tokens, assigned to blocks cyclically (block ``l`` gets
            ``periods[l % len(periods)]``).
        lr: initial per-token inner learning rate of every level (``eta = lr / period``);
            ``0`` reproduces the pretrained model exactly.
        learn_lr: learn the rates with the outer optimizer; default: ``lr > 0`` (a learned rate
            lives in ``(0, lr_max)``, so ``lr = 0`` needs ``learn_lr=False``).
        lr_max: bound of a learned rate.
        meta_grad: ``first_order`` or ``full`` (see :class:`~nestlearn.memory.cms.CMSConfig`).
        objective: the levels' in-context error signal: ``next`` (local next-input regression;
            cheap) or ``ntp`` (the model's next-token gradient: every call of the model then runs
            the exact driver :func:`~nestlearn.models.ntp.ntp_forward`). See docs/fidelity.md.
        retention: the levels' pull toward the pretrained MLP at each boundary (``cms.retention``,
            fidelity CMS-12); ``0`` (eq. 71 as written) keeps the stacking experiments as
            measured.
    """
    if cfg.family != "transformer":
        raise ValueError(
            f"ad-hoc level stacking converts a 'transformer' model, got family {cfg.family!r}"
        )
    learn = lr > 0 if learn_lr is None else learn_lr
    hidden = cfg.ffn_width
    cms = {
        "periods": [int(periods[0])],
        "hidden_mult": hidden / cfg.dim,
        "activation": "swiglu",
        "variant": "sequential",
        "mode": "in_context",
        "objective": objective,
        "lr": float(lr),
        "lr_max": float(lr_max),
        "learn_lr": bool(learn),
        "meta_grad": meta_grad,
        "norm_eps": cfg.norm_eps,
        "retention": float(retention),
    }
    got = CMSConfig.from_dict(cms).level_hidden(cfg.dim)  # validates the options too
    if got != hidden:
        raise ValueError(
            f"the FFN width {hidden} is not a multiple of 16 (CMS level widths are); got {got}"
        )
    per_layer = [[p] for p in layer_periods(cfg.n_layers, periods)]
    return dataclasses.replace(
        cfg, family="transformer-cms", mixer={"cms": cms, "layer_periods": per_layer}
    )


@torch.no_grad()
def stack_levels(
    model: LanguageModel,
    periods: Sequence[int] = (64, 256, 1024),
    *,
    lr: float = 0.0,
    learn_lr: bool | None = None,
    lr_max: float = 0.01,
    meta_grad: str = "first_order",
    objective: str = "next",
    retention: float = 0.0,
) -> LanguageModel:
    """A ``transformer-cms`` copy of ``model`` whose CMS levels start at its MLPs.

    Every parameter is copied exactly (attention, norms, embeddings and each block's
    ``w_gate``/``w_up``/``w_down`` into its level 0); the only new parameters are the learned
    rates' logits when ``learn_lr``. See :func:`stacked_config` for the arguments.
    """
    for i, block in enumerate(model.blocks):
        if not isinstance(block.ffn, SwiGLU):
            raise ValueError(
                f"block {i} has a {type(block.ffn).__name__} FFN; stacking needs SwiGLU MLPs"
            )
    new_cfg = stacked_config(
        model.cfg,
        periods,
        lr=lr,
        learn_lr=learn_lr,
        lr_max=lr_max,
        meta_grad=meta_grad,
        objective=objective,
        retention=retention,
    )
    p = next(model.parameters())
    out = build_model(new_cfg, device=p.device).to(p.dtype)
    state = {}
    for k, v in model.state_dict().items():
        parts = k.split(".")
        if len(parts) == 5 and parts[0] == "blocks" and parts[2] == "ffn":
            k = ".".join([*parts[:3], "levels", "0", *parts[3:]])
        state[k] = v
    missing, unexpected = out.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("lr_logit")]
    missing = [m for m in missing if not (m == "head.weight" and new_cfg.tie_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"stacking left {missing[:4]} unset and {unexpected[:4]} unused")
    out.train(model.training)
    logger.info(
        "stacked %d MLPs into CMS levels with periods %s (lr %g)",
        len(model.blocks),
        list(periods),
        lr,
    )
    return out
