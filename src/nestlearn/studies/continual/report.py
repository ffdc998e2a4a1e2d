"""Report of the class-incremental runs: ``class_incremental.md`` and one plot per benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nestlearn.studies.continual.classify import CILResult

__all__ = ["PAPER_CLAIM", "plot_accuracy", "write_report"]


PAPER_CLAIM = (
    "The paper (arXiv 2512.24695 §9.1, Fig. 6; Llama3-8B and Llama-3B continually pre-trained "
    "15B tokens after the conversion) reports Hope-Attention > InCA > EWC and > ICL on CLINC, "
    "Banking and DBpedia. Third-party digitisations of Fig. 6 disagree by several points "
    "(CLINC, Llama3-8B: Hope about 90-93, ICL about 78; digest §6)."
)


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}"


def write_report(results: Sequence[CILResult], out: str | Path) -> Path:
    """``out/class_incremental.md`` and one ``out/<benchmark>.png`` per benchmark."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_bench: dict[str, list[CILResult]] = {}
    for r in results:
        by_bench.setdefault(r.benchmark, []).append(r)
    md = ["# Class-incremental classification", "", PAPER_CLAIM, ""]
    for bench, rs in by_bench.items():
        png = plot_accuracy(rs, out / f"{bench}.png")
        s = rs[0].settings
        md += [
            f"## {bench}",
            "",
            f"{len(rs[0].tasks)} tasks, {sum(len(t) for t in rs[0].tasks)} classes; "
            f"{s.get('shots')} demonstrations per class in the stream, "
            f"{s.get('eval_per_class')} test utterance(s) per class, window "
            f"{s.get('window')} tokens, seed {s.get('seed')}.",
            "",
            "| method | average accuracy | final accuracy | backward transfer | stream tokens "
            "| wall time | settings |",
            "|---|--:|--:|--:|--:|--:|---|",
        ]
        for r in rs:
            extra = {k: v for k, v in r.settings.items() if k not in
                     ("shots", "eval_per_class", "window", "seed", "run")}  # fmt: skip
            md.append(
                f"| {r.method} | {_pct(r.average_accuracy)} | {_pct(r.final_accuracy)} | "
                f"{_pct(r.backward_transfer)} | {r.stream_tokens:,} | {r.wall_time_s:.0f} s | "
                f"{', '.join(f'{k}={v}' for k, v in extra.items())} |"
            )
        md += ["", "Accuracy (%) on all classes seen so far, after each task:", ""]
        n = max(len(r.acc) for r in rs)
        md.append("| method | " + " | ".join(str(t + 1) for t in range(n)) + " |")
        md.append("|---|" + "--:|" * n)
        for r in rs:
            md.append(f"| {r.method} | " + " | ".join(_pct(a) for a in r.acc) + " |")
        md += ["", f"![{bench}]({png.name})", ""]
    from nestlearn.utils.files import atomic_write_bytes

    path = out / "class_incremental.md"
    atomic_write_bytes(path, "\n".join(md).encode("utf-8"))
    return path


def plot_accuracy(results: Sequence[CILResult], path: str | Path) -> Path:
    """Accuracy on the classes seen so far against the number of tasks, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for r in results:
        ax.plot(range(1, len(r.acc) + 1), [100 * a for a in r.acc], marker="o", label=r.method)
    ax.set_xlabel("tasks learned")
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.set_title(f"{results[0].benchmark}: class-incremental")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
