"""Momentum against delta momentum on the paper's toy function (arXiv 2512.24695, eq. 53, Fig. 4).

    psi(r, theta) = r^2 + k (r - theta + alpha sin(omega r))^2,   start (r, theta) = (-3.5, 2).

The paper gives no k, alpha, omega; we use k = 10, alpha = 1, omega = 3 (a narrow, wiggly
valley theta = r + sin(3r) whose floor slopes gently to the minimum psi = 0 at the origin).
Both optimizers use mu = 0.9 and 300 steps; we sweep the learning rate for each and compare:

* ``momentum``: ``torch.optim.SGD(momentum=0.9)``;
* ``delta (eq. 49)``: ``DeltaMomentum(decay=1e-4, normalize=False)``, the printed rule
  b <- b (mu I - decay g g^T) + g, whose decay grows with the squared gradient;
* ``delta (normalised)``: ``DeltaMomentum(decay=0.3, normalize=True)``, nestlearn's default form
  with the unit gradient in the decay.

Writes ``docs/figures/optim_toy.png`` and replaces the section between the ``optim_toy`` markers
of ``docs/optimizers.md``. Runs in a few seconds on a CPU:  ``python experiments/optim_toy.py``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from nestlearn.optim import DeltaMomentum  # noqa: E402

K, ALPHA, OMEGA = 10.0, 1.0, 3.0
START = (-3.5, 2.0)
MU = 0.9
STEPS = 300
LRS = np.geomspace(1e-3, 4e-2, 13)
TOL = 1e-3
REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- optim_toy:begin -->", "<!-- optim_toy:end -->"

METHODS: dict[str, Callable[[list[torch.Tensor], float], torch.optim.Optimizer]] = {
    "momentum": lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=MU),
    "delta (eq. 49, decay 1e-4)": lambda ps, lr: DeltaMomentum(
        ps, lr=lr, momentum=MU, decay=1e-4, normalize=False
    ),
    "delta (normalised, decay 0.3)": lambda ps, lr: DeltaMomentum(
        ps, lr=lr, momentum=MU, decay=0.3, normalize=True
    ),
}


Consts = tuple[float, float, float]
OTHER_CONSTS: list[Consts] = [(2.0, 1.0, 3.0), (10.0, 0.5, 1.0), (30.0, 1.0, 2.0)]
"""Further (k, alpha, omega) for the robustness table (chosen before looking at results)."""


def psi(r: torch.Tensor | np.ndarray, theta: torch.Tensor | np.ndarray,
        consts: Consts = (K, ALPHA, OMEGA)) -> torch.Tensor:  # fmt: skip
    """The toy objective, eq. 53 (works on tensors and arrays)."""
    k, alpha, omega = consts
    sin = torch.sin if isinstance(r, torch.Tensor) else np.sin
    return r**2 + k * (r - theta + alpha * sin(omega * r)) ** 2


def run(
    method: str, lr: float, consts: Consts = (K, ALPHA, OMEGA)
) -> tuple[np.ndarray, np.ndarray]:
    """Optimise from START; returns the path [steps+1, 2] and psi per step (inf once diverged)."""
    w = torch.nn.Parameter(torch.tensor(START, dtype=torch.float64))
    opt = METHODS[method]([w], lr)
    path, losses = [w.detach().clone()], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = psi(w[0], w[1], consts)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        path.append(w.detach().clone())
        if not math.isfinite(losses[-1]) or losses[-1] > 1e6:
            losses += [math.inf] * (STEPS - len(losses))
            break
    final = float(psi(w[0], w[1], consts).detach())
    losses.append(final if math.isfinite(final) and final < 1e6 else math.inf)
    return torch.stack(path).numpy(), np.array(losses)


def steps_to(losses: np.ndarray, tol: float = TOL) -> int | None:
    hit = np.nonzero(losses < tol)[0]
    return int(hit[0]) if hit.size else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--figure", default=str(REPO / "docs/figures/optim_toy.png"))
    ap.add_argument("--doc", default=str(REPO / "docs/optimizers.md"))
    args = ap.parse_args()

    sweep = {m: [run(m, lr)[1] for lr in LRS] for m in METHODS}
    finals = {m: np.array([ls[-1] for ls in sweep[m]]) for m in METHODS}
    best = {m: int(np.nanargmin(np.where(np.isfinite(f), f, np.nan))) for m, f in finals.items()}
    shared_lr = float(LRS[best["momentum"]])  # trajectories at momentum's best learning rate

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    rr, tt = np.meshgrid(np.linspace(-4, 1.5, 300), np.linspace(-3, 3, 300))
    axes[0].contour(rr, tt, np.log10(psi(rr, tt) + 1e-3), levels=25, cmap="Greys", linewidths=0.6)
    colours = ["tab:blue", "tab:red", "tab:green"]
    for i, (m, c) in enumerate(zip(METHODS, colours)):
        path, losses = run(m, shared_lr)
        axes[0].plot(path[:, 0], path[:, 1], "-", color=c, lw=1.0, label=m)
        axes[1].semilogy(np.arange(len(losses)), losses, color=c, label=m)
        axes[2].loglog(LRS, np.where(np.isfinite(finals[m]), finals[m], np.nan), "o-", color=c,
                       label=m)  # fmt: skip
        div = ~np.isfinite(finals[m])
        axes[2].plot(LRS[div], np.full(div.sum(), 1e3 * 4**i), "x", color=c, ms=8)
    axes[0].plot(*START, "ko")
    axes[0].plot(0, 0, "k*", ms=12)
    axes[0].set(xlabel="r", ylabel="theta", title=f"paths at lr={shared_lr:.3g}, mu={MU}")
    axes[0].set_xlim(-4, 1.5)
    axes[0].set_ylim(-3, 3)
    axes[1].set(xlabel="step", ylabel="psi", title=f"psi per step at lr={shared_lr:.3g}")
    axes[2].set(xlabel="learning rate", ylabel=f"psi after {STEPS} steps (x = diverged)",
                title="learning-rate sweep")  # fmt: skip
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"psi = r^2 + {K:g} (r - theta + {ALPHA:g} sin({OMEGA:g} r))^2 from {START}")
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)

    rows = []
    for m in METHODS:
        f = finals[m]
        b = best[m]
        hit = steps_to(sweep[m][b])
        at_shared = sweep[m][best["momentum"]][-1]
        rows.append(
            f"| {m} | {LRS[b]:.3g} | {f[b]:.2e} | {hit if hit is not None else '—'} | "
            f"{at_shared:.2e} | {int((f < 1).sum())} / {len(LRS)} |"
        )
    robust = []
    for consts in [(K, ALPHA, OMEGA), *OTHER_CONSTS]:
        cells = []
        for m in METHODS:
            f = np.array([run(m, lr, consts)[1][-1] for lr in LRS])
            cells.append(f"{np.min(f):.1e} ({int((f < 1).sum())})")
        robust.append(
            f"| {consts[0]:g}, {consts[1]:g}, {consts[2]:g} | " + " | ".join(cells) + " |"
        )
    figure_rel = Path(args.figure).resolve().relative_to(Path(args.doc).resolve().parent)
    section = "\n".join(
        [
            BEGIN,
            f"*Generated by `experiments/optim_toy.py` (k = {K:g}, alpha = {ALPHA:g}, "
            f"omega = {OMEGA:g}, mu = {MU}, {STEPS} steps, {len(LRS)} learning rates from "
            f"{LRS[0]:.0e} to {LRS[-1]:.0e}).*",
            "",
            f"![toy]({figure_rel})",
            "",
            f"| method | best lr | psi at best lr | steps to psi < {TOL:g} at best lr | "
            f"psi at lr {shared_lr:.3g} | learning rates ending at psi < 1 |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "Robustness: best psi after the sweep (and how many of the learning rates end at "
            "psi < 1) for other constants:",
            "",
            "| k, alpha, omega | " + " | ".join(METHODS) + " |",
            "|---|" + "---|" * len(METHODS),
            *robust,
            END,
        ]
    )
    doc = Path(args.doc)
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)
    print(section)


if __name__ == "__main__":
    main()
