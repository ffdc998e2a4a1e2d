"""Optimizers: pure step functions plus thin ``torch.optim.Optimizer`` classes.

Nested Learning (arXiv 2512.24695, §4 and §7.2) reads optimizers as associative memories over
gradients; richer memories give the optimizers here. Every class is a standard
``torch.optim.Optimizer`` (groups, closures, ``state_dict``) with an AdamW fallback group for
parameters its method cannot handle (``use_fallback=True``); see docs/optimizers.md.
"""

from nestlearn.optim.base import NestedOptimizer, adamw_update
from nestlearn.optim.build import build_optimizer, param_groups, routed_param_groups
from nestlearn.optim.config import OPTIMIZERS, OptimConfig
from nestlearn.optim.deep_momentum import DeepMomentum, deep_momentum_update
from nestlearn.optim.delta_gd import DeltaGD, delta_gd_update
from nestlearn.optim.m3 import M3, m3_update
from nestlearn.optim.momentum import (
    DeltaMomentum,
    FeatureMapMomentum,
    NonlinearOutputMomentum,
    PreconditionedMomentum,
    delta_momentum_update,
    momentum_update,
    preconditioned_momentum_update,
)
from nestlearn.optim.newton_schulz import muon_lr_scale, newton_schulz

__all__ = [
    "OPTIMIZERS",
    "M3",
    "DeepMomentum",
    "DeltaGD",
    "DeltaMomentum",
    "FeatureMapMomentum",
    "NestedOptimizer",
    "NonlinearOutputMomentum",
    "OptimConfig",
    "PreconditionedMomentum",
    "adamw_update",
    "build_optimizer",
    "deep_momentum_update",
    "delta_gd_update",
    "delta_momentum_update",
    "m3_update",
    "momentum_update",
    "muon_lr_scale",
    "newton_schulz",
    "param_groups",
    "preconditioned_momentum_update",
    "routed_param_groups",
]
