"""One training run of the ViT study (a cell: optimizer, learning rate, seed) and the
optimizer-step timing (the Fig. 12 analogue).

A cell trains :class:`TinyViT` on the digits training split with minibatches drawn from a
generator seeded by the cell's seed (the same seed also initialises the weights), a linear
warm-up then a cosine decay of every parameter group's learning rate, and records at every
evaluation point the mean minibatch loss since the previous point (the training curve) and the
loss and accuracy on the validation and test splits. At the end the loss on the whole training
split is measured too.

Optimizers (``make_optimizer``): ``adamw`` is ``torch.optim.AdamW`` with decoupled weight decay
on the matrices; ``muon`` and ``m3`` come from :func:`nestlearn.optim.build_optimizer`, which
updates the hidden matrices with the method and everything under ``embed.``/``head.`` and every
vector with its AdamW fallback group (docs/optimizers.md, "The AdamW fallback").
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.data.digits import DigitsSplit, load_digits_split
from nestlearn.memory.cms import attach_outer_schedule
from nestlearn.optim import OptimConfig, build_optimizer
from nestlearn.studies.vit_optim.model import TinyViT, ViTConfig

__all__ = [
    "METHODS",
    "TrainSettings",
    "digits_tensors",
    "make_optimizer",
    "time_optimizer_steps",
    "train_cell",
]

METHODS = ("adamw", "muon", "m3")
"""The optimizers the study compares (the names of :mod:`nestlearn.optim`'s registry)."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything a cell's result depends on besides the optimizer, learning rate and seed."""

    vit: ViTConfig = field(default_factory=ViTConfig)
    """The model."""
    steps: int = 400
    """Optimizer steps per run."""
    batch_size: int = 32
    """Training images per step (drawn without replacement within an epoch)."""
    eval_every: int = 20
    """Steps between evaluation points of the curves (the last step is always one)."""
    warmup: int = 20
    """Linear warm-up steps; then cosine decay to ``min_lr_ratio`` of the peak."""
    min_lr_ratio: float = 0.1
    """Learning rate at the last step as a fraction of the peak."""
    weight_decay: float = 0.05
    """Decoupled weight decay of the matrices (AdamW's decayed group; Muon's and M3's method
    group and their fallback's embedding matrices)."""
    fallback_lr: float | None = None
    """Learning rate of Muon's and M3's AdamW fallback (patch projection, positions, class
    token, classifier, norms, biases); ``None`` = the cell's own learning rate."""
    m3_slow_every: int = 20
    """M3's slow-momentum period f (steps)."""
    m3_alpha: float = 0.5
    """M3's weight of the slow momentum's output."""
    ns_dtype: str = "float32"
    """Newton–Schulz precision for Muon and M3 (``optim.ns_dtype``)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "m3_slow_every"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if not 0 <= self.warmup < self.steps:
            raise ValueError(f"warmup must be in [0, steps={self.steps}), got {self.warmup}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"weight-decay must be >= 0, got {self.weight_decay}")
        if self.fallback_lr is not None and not self.fallback_lr > 0:
            raise ValueError(f"fallback-lr must be > 0, got {self.fallback_lr}")
        if self.m3_alpha < 0:
            raise ValueError(f"m3-alpha must be >= 0 (0 = no slow momentum), got {self.m3_alpha}")
        OptimConfig(name="m3", ns_dtype=self.ns_dtype)  # refuses an unknown ns_dtype, naming them

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "vit"}
        return {"vit": self.vit.to_dict(), **d}


def digits_tensors(seed: int = 0) -> DigitsSplit:
    """:func:`~nestlearn.data.digits.load_digits_split` with every array as a torch tensor
    (images ``[N, 8, 8]`` float32, labels ``[N]`` int64; memory shared with the arrays)."""
    return DigitsSplit(*(torch.from_numpy(a) for a in load_digits_split(seed=seed)))


def make_optimizer(
    model: torch.nn.Module, name: str, lr: float, s: TrainSettings
) -> torch.optim.Optimizer:
    """The optimizer ``name`` (one of :data:`METHODS`) at peak learning rate ``lr``."""
    if name not in METHODS:
        raise ValueError(
            f"optimizer {name!r} is not in this study; choose from {', '.join(METHODS)}"
        )
    if name == "adamw":
        cfg = OptimConfig(name="adamw", lr=lr, weight_decay=s.weight_decay)
    else:
        cfg = OptimConfig(
            name=name,
            lr=s.fallback_lr if s.fallback_lr is not None else lr,
            matrix_lr=lr,
            weight_decay=s.weight_decay,
            ns_dtype=s.ns_dtype,
            m3_slow_every=s.m3_slow_every,
            m3_alpha=s.m3_alpha,
        )
    opt = build_optimizer(model, cfg)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


def lr_factor(step: int, s: TrainSettings) -> float:
    """Schedule multiplier for step ``step`` (0-based): linear warm-up, then cosine."""
    if step < s.warmup:
        return (step + 1) / s.warmup
    span = max(1, s.steps - 1 - s.warmup)
    frac = min(1.0, (step - s.warmup) / span)
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))


@torch.no_grad()
def evaluate(model: TinyViT, x: Tensor, y: Tensor, chunk: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on images ``x [N, H, W]``, labels ``y [N]``."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), chunk):
        logits = model(x[i : i + chunk])
        loss += F.cross_entropy(logits, y[i : i + chunk], reduction="sum").item()
        correct += int((logits.argmax(-1) == y[i : i + chunk]).sum())
    model.train()
    return loss / len(y), correct / len(y)


def batch_order(n: int, steps: int, batch_size: int, seed: int) -> Tensor:
    """Minibatch indices ``[steps, batch_size]``: epochs of seeded permutations of ``range(n)``,
    concatenated (so every image is seen once per epoch)."""
    g = torch.Generator().manual_seed(seed)
    need = steps * batch_size
    perms = [torch.randperm(n, generator=g) for _ in range(-(-need // n))]
    return torch.cat(perms)[:need].view(steps, batch_size)


def train_cell(
    data: DigitsSplit, name: str, lr: float, seed: int, s: TrainSettings
) -> dict[str, Any]:
    """Train one cell on ``data`` (tensors: :func:`digits_tensors`); returns its curves and
    final numbers (JSON-ready).

    A non-finite training loss stops the run before the bad update: ``diverged`` gives the step
    and the final losses are ``inf``.
    """
    model = TinyViT(s.vit).init_weights(seed)
    opt = make_optimizer(model, name, lr, s)
    attach_outer_schedule(model, opt)  # the house rule for every loop; a no-op for this ViT
    order = batch_order(len(data.y_train), s.steps, s.batch_size, seed + 1_000_003)
    curve: dict[str, list[float]] = {k: [] for k in
                                     ("step", "train_loss", "val_loss", "test_loss", "test_acc")}  # fmt: skip
    opt_times: list[float] = []
    running, n_running, diverged = 0.0, 0, None
    t_start = time.perf_counter()
    for step in range(s.steps):
        idx = order[step]
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        if not torch.isfinite(loss):
            diverged = step
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        f = lr_factor(step, s)
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * f
        t0 = time.perf_counter()
        opt.step()
        opt_times.append(time.perf_counter() - t0)
        running += loss.item()
        n_running += 1
        if (step + 1) % s.eval_every == 0 or step + 1 == s.steps:
            val_loss, _ = evaluate(model, data.x_val, data.y_val)
            test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
            for k, v in (("step", step + 1), ("train_loss", running / n_running),
                         ("val_loss", val_loss), ("test_loss", test_loss),
                         ("test_acc", test_acc)):  # fmt: skip
                curve[k].append(v)
            running, n_running = 0.0, 0
    wall = time.perf_counter() - t_start
    params_finite = all(torch.isfinite(p).all() for p in model.parameters())
    if diverged is None and not params_finite:
        diverged = s.steps
    if diverged is not None:
        final = {k: math.inf for k in ("train_loss", "val_loss", "test_loss")}
        final.update(test_acc=0.0, val_acc=0.0)
    else:
        train_loss, train_acc = evaluate(model, data.x_train, data.y_train)
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val)
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
        final = {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                 "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc}  # fmt: skip
    return {
        "optimizer": name,
        "lr": lr,
        "seed": seed,
        "final": final,
        "diverged": diverged,
        "curve": curve,
        "wall_s": wall,
        "opt_step_ms_median": 1e3 * statistics.median(opt_times) if opt_times else None,
        "params": sum(p.numel() for p in model.parameters()),
    }


def time_optimizer_steps(
    vit: ViTConfig,
    names: list[str],
    s: TrainSettings,
    steps: int = 40,
    warmup: int = 5,
    batch: Tensor | None = None,
    labels: Tensor | None = None,
) -> dict[str, Any]:
    """Median wall time of ``optimizer.step()`` alone for each optimizer, on copies of one model
    (``vit``, seed 0) holding the same gradients (one real minibatch's, computed once).

    The optimizers step in turn, in a rotating order, so load from other processes hits them
    alike; the first ``warmup`` rounds are not timed. Also times one forward + backward of the
    minibatch (median of ``warmup + steps`` repeats) to show the optimizer's share of a step.
    Learning rates are 1e-3 (the step's cost does not depend on them). The median leaves out
    M3's slow update (one step in ``m3_slow_every``); the mean includes it.
    """
    base = TinyViT(vit).init_weights(0)
    if batch is None:
        g = torch.Generator().manual_seed(0)
        batch = torch.randn(s.batch_size, vit.image_size, vit.image_size, generator=g)
        labels = torch.randint(0, vit.classes, (s.batch_size,), generator=g)
    fb = []
    for _ in range(warmup + steps):
        base.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        F.cross_entropy(base(batch), labels).backward()
        fb.append(time.perf_counter() - t0)
    models = {n: copy.deepcopy(base) for n in names}
    for m in models.values():  # deepcopy does not copy .grad
        for p, q in zip(m.parameters(), base.parameters()):
            p.grad = q.grad.clone()
    opts = {n: make_optimizer(models[n], n, 1e-3, s) for n in names}
    for n in names:
        attach_outer_schedule(models[n], opts[n])  # a no-op for this ViT (no CMS levels)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + steps):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            opts[n].step()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[n].append(dt)
    return {
        "dim": vit.dim,
        "depth": vit.depth,
        "params": sum(p.numel() for p in base.parameters()),
        "threads": torch.get_num_threads(),
        "steps": steps,
        "fwd_bwd_ms": 1e3 * statistics.median(fb[warmup:]),
        "step_ms": {n: 1e3 * statistics.median(t) for n, t in times.items()},
        "step_ms_mean": {n: 1e3 * statistics.fmean(t) for n, t in times.items()},
    }
