"""Training: config, trainer, checkpoints, schedules, distributed wrapping."""

from nestlearn.train.config import ConfigError, TrainConfig, resolve_config
from nestlearn.train.guards import TrainingStopped
from nestlearn.train.trainer import Trainer, TrainResult

__all__ = [
    "ConfigError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingStopped",
    "resolve_config",
]
