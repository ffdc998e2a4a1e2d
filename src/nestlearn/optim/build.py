"""Build a torch optimizer from an :class:`OptimConfig` and a model.

Routing rule for every optimizer but ``adamw`` (docs/optimizers.md, "Fallback"):

* **method group** — parameters with ``ndim >= 2`` whose name contains none of
  ``cfg.fallback_patterns`` (default ``embed``, ``head``): the hidden matrices. Learning rate
  ``cfg.matrix_lr`` (or ``cfg.lr``), weight decay ``cfg.weight_decay``.
* **AdamW fallback groups** (``use_fallback=True``) — embeddings and the LM head (with weight
  decay) and every tensor with fewer than two dimensions (norm gains, biases; no decay).
  Learning rate ``cfg.lr``, betas ``cfg.betas``, epsilon ``cfg.eps``.

One optimizer object holds all groups, so the trainer keeps one ``state_dict`` and its LR
schedule (which rescales every group's ``lr`` from its ``initial_lr``) drives both.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from nestlearn.optim.config import OptimConfig
from nestlearn.optim.deep_momentum import DeepMomentum
from nestlearn.optim.delta_gd import DeltaGD
from nestlearn.optim.m3 import M3
from nestlearn.optim.momentum import (
    DeltaMomentum,
    FeatureMapMomentum,
    NonlinearOutputMomentum,
    PreconditionedMomentum,
)

log = logging.getLogger(__name__)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters into decayed (>= 2-D, not embeddings) and non-decayed groups (AdamW)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim >= 2 and "embed" not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def routed_param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Parameter groups for a method optimizer: the method group and the AdamW fallback groups
    (see the module docstring). Empty groups are left out."""
    method, fb_decay, fb_plain = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            fb_plain.append(p)
        elif any(pat in name for pat in cfg.fallback_patterns):
            fb_decay.append(p)
        else:
            method.append(p)
    matrix_lr = cfg.matrix_lr if cfg.matrix_lr is not None else cfg.lr
    groups: list[dict[str, Any]] = []
    if method:
        groups.append({"params": method, "lr": matrix_lr, "weight_decay": cfg.weight_decay})
    if fb_decay:
        groups.append({"params": fb_decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                       "use_fallback": True})  # fmt: skip
    if fb_plain:
        groups.append({"params": fb_plain, "lr": cfg.lr, "weight_decay": 0.0,
                       "use_fallback": True})  # fmt: skip
    log.info(
        "optim %s: %d tensors (%d numbers) with the method, %d with AdamW",
        cfg.name,
        len(method),
        sum(p.numel() for p in method),
        len(fb_decay) + len(fb_plain),
    )
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Return the optimizer named by ``cfg.name`` over ``model``'s trainable parameters."""
    if cfg.name == "adamw":
        return torch.optim.AdamW(
            param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps
        )
    groups = routed_param_groups(model, cfg)
    fb = {"fallback_betas": cfg.betas, "fallback_eps": cfg.eps}
    mu, lr = cfg.momentum, cfg.lr
    ns = {"ns_steps": cfg.ns_steps, "ns_dtype": cfg.ns_dtype}
    if cfg.name == "sgd":
        return PreconditionedMomentum(groups, lr, mu, preconditioner="identity", ema=False,
                                      nesterov=cfg.nesterov, **fb)  # fmt: skip
    if cfg.name in ("muon", "nonlinear-momentum"):
        output = "newton-schulz" if cfg.name == "muon" else cfg.nonlinear_output
        return NonlinearOutputMomentum(groups, lr, cfg.weight_decay, mu, cfg.nesterov,
                                       output=output, adjust_lr_fn=cfg.muon_adjust_lr,
                                       **ns, **fb)  # fmt: skip
    if cfg.name in ("m3", "m3-literal"):
        variant = "literal" if cfg.name == "m3-literal" else "stabilised"
        return M3(groups, lr, (mu, cfg.betas[1], cfg.beta3), cfg.m3_alpha, cfg.m3_slow_every,
                  cfg.eps, cfg.weight_decay, variant=variant, precondition=cfg.m3_precondition,
                  adjust_lr_fn=cfg.muon_adjust_lr, **ns, **fb)  # fmt: skip
    if cfg.name == "delta-momentum":
        return DeltaMomentum(groups, lr, mu, decay=cfg.delta_decay,
                             normalize=cfg.delta_normalize, **fb)  # fmt: skip
    if cfg.name == "precond-momentum":
        return PreconditionedMomentum(groups, lr, mu, preconditioner=cfg.precond,
                                      apply_to=cfg.precond_apply_to, ema=True,
                                      nesterov=cfg.nesterov, beta2=cfg.betas[1], eps=cfg.eps,
                                      **fb)  # fmt: skip
    if cfg.name == "deep-momentum":
        return DeepMomentum(groups, lr, mu, hidden=cfg.dmgd_hidden, objective=cfg.dmgd_objective,
                            inner_lr=cfg.dmgd_inner_lr, key_lr=cfg.dmgd_key_lr, **fb)  # fmt: skip
    if cfg.name == "feature-momentum":
        return FeatureMapMomentum(groups, lr, mu, feature_map=cfg.feature_map,
                                  nesterov=cfg.nesterov, **fb)  # fmt: skip
    if cfg.name == "delta-gd":
        return DeltaGD(groups, modules=model, lr=lr, decay=cfg.dgd_decay, **fb)
    raise ValueError(f"unknown optimizer {cfg.name!r}")
