"""Optimizer configuration (the ``optim.*`` keys of a run config)."""

from __future__ import annotations

from dataclasses import dataclass

OPTIMIZERS = ("adamw",)


@dataclass
class OptimConfig:
    name: str = "adamw"
    """Which optimizer: one of ``nestlearn.optim.config.OPTIMIZERS``."""
    lr: float = 3e-3
    """Peak learning rate (reached after warm-up, then cosine decay)."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices only (not norms, biases, embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if self.name not in OPTIMIZERS:
            raise ValueError(
                f"optim.name={self.name!r} is not known; choose one of {', '.join(OPTIMIZERS)}"
            )
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
