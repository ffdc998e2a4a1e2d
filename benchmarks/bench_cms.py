"""Timing of the Continuum Memory System against a plain SwiGLU FFN (timing only; prints JSON).

Each configuration is timed forward+backward (the training cost of the module alone) on one
``[B, T, D]`` input, interleaved with the SwiGLU baseline in the same process, and reported as
``ratio = cms_seconds / swiglu_seconds`` (best of ``--reps``). The SwiGLU has the Transformer++
width ``8/3 D``; every CMS config has about the same number of parameters (the default hidden
split). Ratios, not absolute times, are the result: run it twice on a busy machine.

    .venv/bin/python benchmarks/bench_cms.py --threads 2 --D 256 --B 4 --T 512
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nestlearn.memory.cms import CMSConfig, ContinuumMemory


class _SwiGLU(torch.nn.Module):
    """The Transformer++ FFN (same math as ``nestlearn.layers.ffn.SwiGLU``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_gate = torch.nn.Linear(dim, hidden, bias=False)
        self.w_up = torch.nn.Linear(dim, hidden, bias=False)
        self.w_down = torch.nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor, *, state: None = None) -> tuple[torch.Tensor, None]:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x)), None


CONFIGS: dict[str, dict] = {
    "static": {"mode": "static"},
    "in_context full (16,64,256)": {},
    "in_context first_order (16,64,256)": {"meta_grad": "first_order"},
    "in_context full (8,32,128)": {"periods": (8, 32, 128)},
    "in_context first_order (8,32,128)": {"periods": (8, 32, 128), "meta_grad": "first_order"},
    "in_context full (32,128,512)": {"periods": (32, 128, 512)},
    "nested full (16,64,256)": {"variant": "nested"},
    "independent full (16,64,256)": {"variant": "independent"},
    "in_context full gelu (16,64,256)": {"activation": "gelu"},
}


def best_time(fn: Callable[[], object], reps: int) -> float:
    fn()
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def fwd_bwd(mod: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        y, _ = mod(x)
        y.square().mean().backward()
        mod.zero_grad(set_to_none=True)
        x.grad = None

    return run


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--D", type=int, default=256)
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated substrings of config names")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.B, a.T, a.D, requires_grad=True)
    base = _SwiGLU(a.D, int(math.ceil(8 * a.D / 3 / 64) * 64))
    for p in base.parameters():
        torch.nn.init.normal_(p, std=0.02)
    rows = []
    for name, over in CONFIGS.items():
        if a.only and not any(s in name for s in a.only.split(",")):
            continue
        mod = ContinuumMemory(a.D, CMSConfig(**over))
        for p in mod.parameters():
            if p.ndim == 2:
                torch.nn.init.normal_(p, std=0.02)
        t_base = best_time(fwd_bwd(base, x), a.reps)
        t_cms = best_time(fwd_bwd(mod, x), a.reps)
        rows.append({
            "config": name,
            "cms_s": round(t_cms, 4),
            "swiglu_s": round(t_base, 4),
            "ratio": round(t_cms / t_base, 2),
            "cms_params": sum(p.numel() for p in mod.parameters()),
            "swiglu_params": sum(p.numel() for p in base.parameters()),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"shape": [a.B, a.T, a.D], "threads": a.threads, "results": rows}))


if __name__ == "__main__":
    main()
