"""The ViT optimizer study's outputs: ``results.json``, ``results.md`` and ``curves.png``.

Every file is written through a temporary file and a rename, so a reader never sees half of
one. Numbers over seeds are mean ± sample standard deviation (0 for one seed).
"""

from __future__ import annotations

import io
import json
import math
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

from nestlearn.data.prepare import atomic_write_bytes

__all__ = ["markdown", "summary_rows", "write_report"]

LABELS = {"adamw": "AdamW", "muon": "Muon", "m3": "M3"}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if any(not math.isfinite(x) for x in xs):
        return math.inf, 0.0
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def _pm(xs: list[float], scale: float = 1.0, digits: int = 4) -> str:
    m, s = _mean_std([scale * x for x in xs])
    return "diverged" if not math.isfinite(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per optimizer: chosen lr, seeds, the final numbers' mean and std, step time."""
    timing = results.get("timing") or []
    width = results["settings"]["train"]["vit"]["dim"]
    t_row = next((t for t in timing if t["dim"] == width), None)
    rows = []
    for name, o in results["optimizers"].items():
        fin = [r["final"] for r in o["runs"]]
        row = {"optimizer": name, "lr": o["lr"], "lr_on_edge": o["lr_on_edge"], "seeds": len(fin)}
        for k in ("train_loss", "val_loss", "test_loss", "test_acc"):
            row[k] = _mean_std([f[k] for f in fin])
        row["step_ms"] = t_row["step_ms"].get(name) if t_row else None
        rows.append(row)
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The report: settings line, main table, learning-rate grids, step-time table."""
    st = results["settings"]
    tr, vit = st["train"], st["train"]["vit"]
    d = results["data"]
    params = next(iter(results["optimizers"].values()))["runs"][0]["params"]
    lines = [
        "# M3 against AdamW and Muon on a small ViT (digits)",
        "",
        f"*`nestlearn vit-optim`: scikit-learn digits (8 x 8 grey, 10 classes), split "
        f"{d['train']} train / {d['val']} validation / {d['test']} test (split seed "
        f"{st['split_seed']}); ViT patch {vit['patch']}, width {vit['dim']}, depth "
        f"{vit['depth']}, {vit['heads']} heads, SwiGLU x{vit['mlp_ratio']:g}, {vit['pool']} "
        f"pooling, {params:,} parameters; {tr['steps']} steps of {tr['batch_size']} images, "
        f"warm-up {tr['warmup']} + cosine to {tr['min_lr_ratio']:g}x, weight decay "
        f"{tr['weight_decay']:g}; M3 slow_every {tr['m3_slow_every']}, alpha "
        f"{tr['m3_alpha']:g}; Newton–Schulz in {tr['ns_dtype']}; Muon/M3 fallback lr "
        f"{'= the lr' if tr['fallback_lr'] is None else format(tr['fallback_lr'], 'g')}. "
        f"Learning rate chosen on seed 0's final validation loss, then {st['seeds']} seed(s). "
        f"torch {torch.__version__}, {platform.machine()}.*",
        "",
        "![curves](curves.png)",
        "",
        "| optimizer | lr | seeds | final train loss | test loss | test accuracy (%) "
        "| optimizer.step() (ms, median) | step vs AdamW |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    rows = summary_rows(results)
    base = next((r["step_ms"] for r in rows if r["optimizer"] == "adamw"), None)
    for r in rows:
        fin = [x["final"] for x in results["optimizers"][r["optimizer"]]["runs"]]
        ms = "—" if r["step_ms"] is None else f"{r['step_ms']:.2f}"
        ratio = "—" if not (base and r["step_ms"]) else f"{r['step_ms'] / base:.2f}x"
        lr = f"{r['lr']:g}" + (" (edge)" if r["lr_on_edge"] else "")
        lines.append(
            f"| {LABELS.get(r['optimizer'], r['optimizer'])} | {lr} | {r['seeds']} "
            f"| {_pm([f['train_loss'] for f in fin])} | {_pm([f['test_loss'] for f in fin])} "
            f"| {_pm([f['test_acc'] for f in fin], 100, 2)} | {ms} | {ratio} |"
        )
    lines += ["", "Learning-rate grid (seed 0): final validation loss / test accuracy.", ""]
    lines += ["| optimizer | " + " | ".join(["lr: val loss (test acc %)"]) + " |", "|---|---|"]
    for name, o in results["optimizers"].items():
        cells = []
        for r in sorted(o["grid"], key=lambda r: r["lr"]):
            f, lr = r["final"], r["lr"]
            v = ("diverged" if r.get("diverged") is not None
                 else f"{f['val_loss']:.4f} ({100 * f['test_acc']:.1f})")  # fmt: skip
            mark = "**" if lr == o["lr"] else ""
            cells.append(f"{mark}{lr:g}: {v}{mark}")
        lines.append(f"| {LABELS.get(name, name)} | " + ", ".join(cells) + " |")
    timing = results.get("timing") or []
    if timing:
        names = list(timing[0]["step_ms"])
        lines += [
            "",
            f"`optimizer.step()` alone (Fig. 12 analogue): median (mean) over "
            f"{timing[0]['steps']} rounds, the optimizers stepping in turn on copies of one model "
            f"with the same gradients, {timing[0]['threads']} torch thread(s); the mean includes "
            "M3's slow update. Forward + backward of one minibatch for scale.",
            "",
            "| width | params | " + " | ".join(f"{LABELS.get(n, n)} (ms)" for n in names)
            + (" | M3 / Muon" if {"m3", "muon"} <= set(names) else "")
            + " | forward + backward (ms) |",
            "|--:|--:|" + "--:|" * len(names)
            + ("--:|" if {"m3", "muon"} <= set(names) else "") + "--:|",
        ]  # fmt: skip
        for t in timing:
            cells = [f"{t['step_ms'][n]:.2f} ({t['step_ms_mean'][n]:.2f})" for n in names]
            if {"m3", "muon"} <= set(names):
                cells.append(f"{t['step_ms']['m3'] / t['step_ms']['muon']:.2f}x")
            lines.append(f"| {t['dim']} | {t['params']:,} | " + " | ".join(cells)
                         + f" | {t['fwd_bwd_ms']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, Any]) -> bytes:
    """PNG bytes: training loss, test loss and test accuracy against the step, one colour per
    optimizer (the mean over seeds at its chosen lr; the band spans the seeds' min to max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("train_loss", "training loss (minibatch mean)", True),
              ("test_loss", "test loss", True), ("test_acc", "test accuracy", False))  # fmt: skip
    for name, o in results["optimizers"].items():
        runs = [r for r in o["runs"] if r.get("diverged") is None]
        if not runs:
            continue
        n = min(len(r["curve"]["step"]) for r in runs)
        steps = runs[0]["curve"]["step"][:n]
        for ax, (key, title, logy) in zip(axes, panels):
            ys = torch.tensor([r["curve"][key][:n] for r in runs], dtype=torch.float64)
            label = f"{LABELS.get(name, name)} (lr {o['lr']:g})"
            (line,) = ax.plot(steps, ys.mean(0).tolist(), label=label)
            if len(runs) > 1:
                ax.fill_between(steps, ys.min(0).values.tolist(), ys.max(0).values.tolist(),
                                color=line.get_color(), alpha=0.2)  # fmt: skip
            ax.set_title(title)
            ax.set_xlabel("step")
            if logy:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("ViT on digits: mean over seeds at each optimizer's tuned lr (band: min-max)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(results: dict[str, Any], out: str | Path) -> None:
    """Write ``results.json``, ``results.md`` and ``curves.png`` into ``out``."""
    out = Path(out)
    data = json.dumps(results, indent=1, default=float) + "\n"
    atomic_write_bytes(out / "results.json", data.encode("utf-8"))
    atomic_write_bytes(out / "results.md", markdown(results).encode("utf-8"))
    atomic_write_bytes(out / "curves.png", plot_curves(results))
