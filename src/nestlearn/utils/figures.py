"""Writing a matplotlib figure to a PNG file: written once for every package that plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_figure"]


def write_figure(fig: Any, out: str | Path, **savefig: Any) -> Path:
    """Save ``fig`` to ``out`` (its folder made first) with ``fig.savefig(out, **savefig)``,
    close it and return the path."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, **savefig)
    plt.close(fig)
    return out
