"""Readable run summaries: the metrics file and loss-curve plots."""

from __future__ import annotations

import json
from pathlib import Path

from nestlearn.utils.figures import write_figure


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """Training and evaluation records of a ``metrics.jsonl`` (last record per step wins)."""
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        (evals if "val_loss" in rec else train)[int(rec.get("step", 0))] = rec
    return [train[k] for k in sorted(train)], [evals[k] for k in sorted(evals)]


def plot_losses(runs: dict[str, str | Path], out: str | Path, title: str = "") -> Path:
    """One PNG with the training (thin) and validation (markers) loss of each run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for i, (label, run_dir) in enumerate(runs.items()):
        color = f"C{i}"
        train, evals = read_metrics(Path(run_dir) / "metrics.jsonl")
        if train:
            steps = [r["step"] for r in train]
            losses = [r["loss"] for r in train]
            ax.plot(steps, losses, color=color, alpha=0.35, lw=0.8)
            k = max(1, len(losses) // 50)
            smooth = [
                sum(losses[max(0, j - k) : j + 1]) / len(losses[max(0, j - k) : j + 1])
                for j in range(len(losses))
            ]
            ax.plot(steps, smooth, color=color, lw=1.6, label=f"{label} train")
        if evals:
            ax.plot(
                [r["step"] for r in evals],
                [r["val_loss"] for r in evals],
                "o--",
                color=color,
                ms=4,
                label=f"{label} val",
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return write_figure(fig, out)
