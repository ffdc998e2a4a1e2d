"""Report of the domain-stream forgetting runs: ``domains.md`` and ``domains.png``.

``domains.py`` trains and scores; this module only reads its result dictionary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_domains", "row_labels", "write_markdown"]


def row_labels(domains: Sequence[str]) -> list[str]:
    """``["before training", "after phase 1 (austen)", ...]``."""
    return ["before training"] + [f"after phase {k} ({d})" for k, d in enumerate(domains, 1)]


def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:+.{digits}f}"


def write_markdown(result: Mapping[str, Any], path: str | Path) -> Path:
    """``domains.md``: protocol line, summary table, one perplexity table per model."""
    c = result["config"]
    domains = c["domains"]
    lines = [
        "# Domain-stream forgetting",
        "",
        f"Tiny models trained from scratch on {' -> '.join(domains)}, {c['steps_per_phase']} "
        f"steps of {c['batch_size']} x {c['seq_len']} tokens per phase ({c['tokenizer']} "
        f"tokenizer), AdamW lr {c['lr']:g} (warm-up {c['warmup_steps']} step(s), then constant, "
        f"optimizer kept across phases), seed {c['seed']}, {c['threads']} thread(s). Held-out: "
        f"{c['eval_windows']} windows of {c['seq_len']} tokens spread over each domain's test "
        f"documents. Wall time {result['wall_time_s']:.0f} s.",
        "",
        "## Summary",
        "",
        "Final = mean over domains after the last phase. Forgetting = mean over earlier domains "
        "of (final - value right after that domain's own phase); positive = forgotten.",
        "",
        "| model | params | final ppl | forgetting (ppl) | final bits/byte "
        "| forgetting (bits/byte) | train s | eval s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in result["models"].items():
        s, w = m["summary"], m["wall_time_s"]
        lines.append(
            f"| {name} | {m['params'] / 1e6:.2f}M | {s['final_ppl_mean']:.2f} "
            f"| {_fmt(s['forgetting_ppl'])} | {s['final_bpb_mean']:.3f} "
            f"| {_fmt(s['forgetting_bpb'], 3)} | {w['train']:.0f} | {w['eval']:.0f} |"
        )
    labels = row_labels(domains)
    for name, m in result["models"].items():
        lines += [
            "",
            f"## {name}",
            "",
            "Held-out perplexity; rows: when measured, columns: held-out domain (bold: the "
            "domain of the phase just trained).",
            "",
            "| measured | " + " | ".join(domains) + " |",
            "|---|" + "---:|" * len(domains),
        ]
        for r, label in enumerate(labels):
            cells = []
            for j, v in enumerate(m["ppl"][r]):
                cell = f"{v:.2f}"
                cells.append(f"**{cell}**" if r > 0 and j == r - 1 else cell)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plot_domains(result: Mapping[str, Any], path: str | Path) -> Path:
    """``domains.png``: one panel per held-out domain, x = phase, y = bits/byte, line per model.

    The before-training row (about 8.1 bits/byte for every model) would squash the curves, so it
    is left off the axes and quoted in each panel's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = result["config"]["domains"]
    xs = list(range(1, len(domains) + 1))
    ticks = [f"{k}\n{d}" for k, d in enumerate(domains, 1)]
    fig, axes = plt.subplots(
        1, len(domains), figsize=(4.0 * len(domains) + 0.5, 3.8), dpi=120, squeeze=False
    )
    for j, (ax, d) in enumerate(zip(axes[0], domains)):
        ax.axvspan(j + 0.5, j + 1.5, color="0.9", zorder=0)  # the phase that trains on d
        init = [m["bpb"][0][j] for m in result["models"].values()]
        for name, m in result["models"].items():
            ax.plot(xs, [row[j] for row in m["bpb"][1:]], marker="o", label=name)
        ax.set_xticks(xs, ticks)
        ax.set_xlim(0.5, len(domains) + 0.5)
        ax.set_title(f"held-out {d}\n(before training: {min(init):.2f}-{max(init):.2f})")
        ax.set_xlabel("after phase")
        if j == 0:
            ax.set_ylabel("bits per byte")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
