"""Optimizers: pure step functions plus thin ``torch.optim.Optimizer`` classes."""

from nestlearn.optim.build import build_optimizer, param_groups
from nestlearn.optim.config import OptimConfig

__all__ = ["OptimConfig", "build_optimizer", "param_groups"]
