"""Build a torch optimizer from an :class:`OptimConfig` and a model."""

from __future__ import annotations

import torch
from torch import nn

from nestlearn.optim.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters into decayed (>= 2-D, not embeddings) and non-decayed groups."""
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


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Return the optimizer named by ``cfg.name`` over ``model``'s trainable parameters."""
    if cfg.name == "adamw":
        return torch.optim.AdamW(
            param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps
        )
    raise ValueError(f"unknown optimizer {cfg.name!r}")
