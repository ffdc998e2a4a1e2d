"""Context usage (arXiv 2512.24695, Fig. 10): loss as a function of token position.

Axis legend: N windows, T window length (tokens), V vocabulary.

Held-out documents (the corpus test split by default) are cut into non-overlapping windows
of ``length + 1`` tokens (a document starts with the ``eos`` id that separates documents in
training; a window never crosses documents; short remainders are dropped). The model reads
each window in one pass (``segment`` > 0: in segments with the state threaded through,
which by the layer contract gives the same result with less memory), and the next-token
loss at every position is averaged over windows. Position ``p`` (1-based) is the loss of the
``p``-th target, predicted from ``p`` tokens of the window, so a model that uses its
context has a curve that falls with ``p``; recurrent and memory families see the whole
window, attention families too (positions past the training length are extrapolation).

Positions are summarised in log-spaced buckets ``[1], [2, 3], [4, 7], ...``; the standard
error of a bucket's mean is taken across windows.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@dataclass
class ContextUsage:
    """Mean loss per position for one model.

    ``position_loss[p - 1]`` is the mean loss (nats) at 1-based position ``p``;
    ``buckets`` are ``{"start", "end", "loss", "stderr", "ppl", "tokens"}`` over positions
    ``start..end`` (inclusive).
    """

    label: str
    length: int
    windows: int
    position_loss: list[float]
    buckets: list[dict[str, float]]
    train_len: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_loss(self) -> float:
        return float(np.mean(self.position_loss))


def log_buckets(length: int) -> list[tuple[int, int]]:
    """1-based inclusive position ranges ``[1, 1], [2, 3], [4, 7], ...`` up to ``length``."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    out = []
    start = 1
    while start <= length:
        out.append((start, min(2 * start - 1, length)))
        start *= 2
    return out


def document_windows(
    documents: Sequence[Sequence[int]] | Sequence[np.ndarray],
    length: int,
    *,
    doc_start: int | None = None,
    max_windows: int | None = None,
) -> np.ndarray:
    """Non-overlapping windows ``[N, length + 1]`` (int64) cut from each document.

    Window ``i`` of a document is ``ids[i * length : i * length + length + 1]`` where
    ``ids = [doc_start] + document``; windows are interleaved across documents (first
    windows of every document, then second windows...) so that ``max_windows`` keeps
    a spread of documents and of depths into them.
    """
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    per_doc: list[list[np.ndarray]] = []
    for doc in documents:
        ids = np.asarray(doc, dtype=np.int64)
        if doc_start is not None:
            ids = np.concatenate([np.array([doc_start], dtype=np.int64), ids])
        n = (len(ids) - 1) // length
        per_doc.append([ids[i * length : i * length + length + 1] for i in range(n)])
    rows: list[np.ndarray] = []
    depth = 0
    while any(depth < len(w) for w in per_doc):
        rows.extend(w[depth] for w in per_doc if depth < len(w))
        depth += 1
    if max_windows is not None:
        rows = rows[:max_windows]
    if not rows:
        raise ValueError(
            f"no document is longer than {length} tokens; lower --length "
            f"(longest has {max((len(d) for d in documents), default=0)} tokens)"
        )
    return np.stack(rows)


def corpus_windows(
    tokenizer: Any, split: str, length: int, max_windows: int | None = None
) -> np.ndarray:
    """:func:`document_windows` over the embedded corpus split ``split`` (train/validation/test)."""
    from nestlearn.data import corpus_documents

    docs = [tokenizer.encode(text) for _, text in corpus_documents(split)]
    return document_windows(
        docs, length, doc_start=getattr(tokenizer, "eos_id", None), max_windows=max_windows
    )


@torch.no_grad()
def position_losses(
    model: nn.Module,
    windows: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 1,
    segment: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Next-token loss at every position of every window: ``[N, T]`` float64 (nats).

    ``windows: [N, T + 1]`` token ids. ``segment``: feed the model ``segment`` tokens at a
    time, threading its state (must equal one full call by the layer contract).
    """
    data = torch.as_tensor(np.asarray(windows), dtype=torch.long)
    if data.ndim != 2 or data.shape[1] < 2:
        raise ValueError(f"windows must be [N, T + 1] with T >= 1, got {tuple(data.shape)}")
    if segment is not None and segment <= 0:
        raise ValueError(f"segment must be positive, got {segment}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in tqdm(range(0, len(data), batch_size), desc="context usage", disable=not progress):
            chunk = data[i : i + batch_size].to(device)
            x, y = chunk[:, :-1], chunk[:, 1:]
            step = x.shape[1] if segment is None else segment
            state = None
            pieces = []
            for s in range(0, x.shape[1], step):
                if step >= x.shape[1]:
                    logits, _ = model(x)
                else:
                    logits, state = model(x[:, s : s + step], state=state, return_state=True)
                # loss per piece: [B, V, t] -> [B, t]; never holds all [B, T, V] logits at once
                pieces.append(
                    F.cross_entropy(
                        logits.float().transpose(1, 2), y[:, s : s + step], reduction="none"
                    )
                )
            loss = torch.cat(pieces, dim=1)
            out.append(loss.double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def summarize(
    losses: torch.Tensor, label: str, *, train_len: int | None = None, **meta: Any
) -> ContextUsage:
    """Per-position means and log-spaced buckets of ``losses: [N, T]``."""
    n, length = losses.shape
    per_pos = losses.mean(0)
    buckets = []
    for a, b in log_buckets(length):
        per_window = losses[:, a - 1 : b].mean(1)  # [N]
        mean = float(per_window.mean())
        se = float(per_window.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
        buckets.append(
            {
                "start": a,
                "end": b,
                "loss": mean,
                "stderr": se,
                "ppl": math.exp(min(mean, 50.0)),
                "tokens": int(n * (b - a + 1)),
            }
        )
    return ContextUsage(label, length, n, per_pos.tolist(), buckets, train_len, dict(meta))


def format_markdown(results: Sequence[ContextUsage]) -> str:
    """One markdown table: a row per bucket, a ``loss ± stderr`` column per model."""
    if not results:
        return ""
    head = "| positions | " + " | ".join(r.label for r in results) + " |"
    sep = "|---|" + "---:|" * len(results)
    lines = [head, sep]
    for k, bk in enumerate(results[0].buckets):
        cells = []
        for r in results:
            if k < len(r.buckets):
                b = r.buckets[k]
                cells.append(f"{b['loss']:.4f} ± {b['stderr']:.4f}")
            else:
                cells.append("")
        span = f"{bk['start']}" if bk["start"] == bk["end"] else f"{bk['start']}-{bk['end']}"
        lines.append(f"| {span} | " + " | ".join(cells) + " |")
    lines.append("| windows | " + " | ".join(str(r.windows) for r in results) + " |")
    return "\n".join(lines)


def _smooth(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Geometric bins (about 12 per doubling) so a log-x curve is readable."""
    x = np.arange(1, len(y) + 1)
    edges = np.unique(
        np.round(np.geomspace(1, len(y) + 1, num=12 * max(1, int(np.log2(len(y)))) + 1)).astype(int)
    )
    cx, cy = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        cx.append(float(np.exp(np.log(x[a - 1 : b - 1]).mean())))
        cy.append(float(y[a - 1 : b - 1].mean()))
    return np.asarray(cx), np.asarray(cy)


def plot_context_usage(
    results: Sequence[ContextUsage], out_png: str | Path, title: str = ""
) -> Path:
    """Loss against position (log x) for each model: bucket means ± standard error over a
    faint smoothed per-position curve; dashed lines mark training lengths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        # buckets (mean ± stderr across windows) carry the message; the per-position curve,
        # smoothed over geometric bins, is drawn faintly behind them
        bx = [math.sqrt(b["start"] * b["end"]) for b in r.buckets]
        by = [b["loss"] for b in r.buckets]
        be = [0.0 if math.isnan(b["stderr"]) else b["stderr"] for b in r.buckets]
        bar = ax.errorbar(
            bx, by, yerr=be, marker="o", ms=4, capsize=2, label=f"{r.label} ({r.windows} windows)"
        )
        color = bar[0].get_color()
        x, y = _smooth(np.asarray(r.position_loss))
        ax.plot(x, y, color=color, alpha=0.25, lw=0.8)
        if r.train_len and r.train_len < r.length:
            ax.axvline(r.train_len, color=color, ls="--", lw=0.8, alpha=0.7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in window (tokens of context)")
    ax.set_ylabel("mean next-token loss (nats)")
    ax.set_title(title or "Context usage (loss vs position; cf. arXiv 2512.24695 Fig. 10)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def write_report(results: Sequence[ContextUsage], out_dir: str | Path) -> dict[str, Path]:
    """Write ``context_usage.{json,md,png}`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "context_usage.json",
        "md": out_dir / "context_usage.md",
        "png": out_dir / "context_usage.png",
    }
    paths["json"].write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    paths["md"].write_text(format_markdown(results) + "\n")
    plot_context_usage(results, paths["png"])
    return paths
