"""Cost of one stacked CMS level against the pretrained SwiGLU it replaces (timing only; JSON).

Ad-hoc level stacking (docs/fidelity.md, "Ad-hoc level stacking (§7.3)") turns each pretrained
MLP into a one-level in-context CMS. This times forward + backward of one layer at SmolLM2-135M's
shape (d = 576, FFN 1536) for several update periods, alternating with the SwiGLU call by call in
one process, and reports ``ratio = cms_seconds / swiglu_seconds`` (best of ``--reps`` each).

    .venv/bin/python benchmarks/bench_stacked_cms.py --threads 2 --periods 16,64,256
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from nestlearn.layers.ffn import SwiGLU
from nestlearn.memory.cms import CMSConfig, ContinuumMemory


def _fwd_bwd(mod: torch.nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    y, _ = mod(x)
    y.sum().backward()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--D", type=int, default=576)
    ap.add_argument("--H", type=int, default=1536)
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--periods", default="16,64,256")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.B, a.T, a.D, requires_grad=True)
    base = SwiGLU(a.D, a.H)
    rows = []
    for p in [int(v) for v in a.periods.split(",")]:
        cfg = CMSConfig(periods=(p,), hidden_mult=a.H / a.D, lr=a.lr, lr_max=10 * a.lr)
        cms = ContinuumMemory(a.D, cfg)
        t_base, t_cms = float("inf"), float("inf")
        for _ in range(a.reps):
            t_base = min(t_base, _fwd_bwd(base, x))
            t_cms = min(t_cms, _fwd_bwd(cms, x))
        rows.append({"period": p, "swiglu_s": round(t_base, 4), "cms_s": round(t_cms, 4),
                     "ratio": round(t_cms / t_base, 2)})  # fmt: skip
    shape = {"D": a.D, "H": a.H, "B": a.B, "T": a.T, "threads": a.threads, "lr": a.lr}
    print(json.dumps({"shape": shape, "rows": rows}))


if __name__ == "__main__":
    main()
