"""Helpers for the optimizer tests: a small float64 regression problem with a real loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class TinyNet(nn.Module):
    """embed -> linear (+bias) -> tanh -> linear -> norm gain -> head; float64 by default."""

    def __init__(self, bias: bool = True, vocab: int = 11, dim: int = 6, hidden: int = 9) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.gain = nn.Parameter(torch.ones(dim))
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        x = x + self.fc2(torch.tanh(self.fc1(x)))
        return self.head(x * self.gain)


class MatNet(nn.Module):
    """Two bias-free linear layers: every parameter is a matrix (for method-only comparisons)."""

    def __init__(self, dim: int = 7, hidden: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def make(model_cls: type[nn.Module] = MatNet, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return model_cls(**kw).double()


def batch(model: nn.Module, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic data for ``step``."""
    g = torch.Generator().manual_seed(1000 + step)
    if isinstance(model, TinyNet):
        idx = torch.randint(0, model.embed.num_embeddings, (4, 5), generator=g)
        return idx, torch.roll(idx, 1, dims=1)
    x = torch.randn(16, model.fc1.in_features, generator=g, dtype=torch.float64)
    return x, torch.sin(x[:, :3] * 2.0)


def loss_fn(model: nn.Module, step: int) -> torch.Tensor:
    x, y = batch(model, step)
    out = model(x)
    if isinstance(model, TinyNet):
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return ((out - y) ** 2).mean()


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    start: int = 0,
    use_closure: bool = False,
) -> list[float]:
    """Run ``steps`` optimizer steps from data step ``start``; returns the losses."""
    losses = []
    for t in range(start, start + steps):

        def closure(t: int = t) -> torch.Tensor:
            opt.zero_grad()
            loss = loss_fn(model, t)
            loss.backward()
            return loss

        if use_closure:
            loss = opt.step(closure)
        else:
            loss = closure()
            opt.step()
        losses.append(float(loss.detach()))
    return losses


def run_pair(
    mine: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    ref: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    steps: int = 100,
    model_cls: type[nn.Module] = MatNet,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Train two identical models, one with each optimizer; return their final parameters."""
    out = []
    for factory in (mine, ref):
        model = make(model_cls)
        init = [p.detach().clone() for p in model.parameters()]
        train(model, factory(list(model.parameters())), steps)
        out.append([p.detach().clone() for p in model.parameters()])
        moved = max((p - q).abs().max().item() for p, q in zip(out[-1], init))
        assert moved > 1e-3, f"parameters barely moved ({moved:.1e}): the comparison is vacuous"
    return out[0], out[1]


def assert_close(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float = 1e-12,
                 atol: float = 1e-12) -> None:  # fmt: skip
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)
