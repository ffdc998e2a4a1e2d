"""Timing of the chunked Titans op against its naive references (timing only; prints JSON).

Reports, per configuration, the seconds per call of the chunk op (forward, and forward+backward),
the naive per-chunk loop on the same input, their ratio, and causal SDPA attention on the same
[B, H, T, D] as a yardstick. Every ratio is measured within one run.

``--clock wall`` (default) is what a user waits for. ``--clock cpu`` counts this process's CPU
seconds, which stays meaningful on a machine shared with other jobs; use it with ``--threads 1``
(with more threads, OpenMP's spin-waiting is counted too).

    .venv/bin/python benchmarks/bench_titans_op.py --threads 2 --T 2048
    .venv/bin/python benchmarks/bench_titans_op.py --threads 1 --clock cpu   # busy machine
    .venv/bin/python benchmarks/bench_titans_op.py --B 2 --chunk 64 --optimizers gd --naive-bwd
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nestlearn.ops.titans import TitansState, chunk_titans, naive_chunk_titans

CLOCK: Callable[[], float] = time.perf_counter


def timeit(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Best of ``reps`` calls after ``warmup`` calls, on the chosen clock."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(reps):
        t0 = CLOCK()
        fn()
        best = min(best, CLOCK() - t0)
    return best


def make(B: int, T: int, H: int, D: int, hidden: int, memory: str, momentum: bool, grad: bool):
    def r(*s: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*s) * scale).requires_grad_(grad)

    q, k = (F.normalize(torch.randn(B, T, H, D), dim=-1).requires_grad_(grad) for _ in range(2))
    v = r(B, T, H, D)
    theta = (torch.rand(B, T, H) * 0.1).requires_grad_(grad)
    eta = (torch.rand(B, T, H) * 0.9).requires_grad_(grad) if momentum else None
    alpha = (torch.rand(B, T, H) * 0.05).requires_grad_(grad)
    shapes = [(D, D)] if memory == "linear" else [(hidden, D), (D, hidden)]
    w = tuple(r(B, H, o, i, scale=0.1) for o, i in shapes)
    m = tuple(r(B, H, o, i, scale=0.0) for o, i in shapes) if momentum else None
    return {"q": q, "k": k, "v": v, "theta": theta, "eta": eta, "alpha": alpha,
            "initial_state": TitansState(w, m)}  # fmt: skip


def bench_one(a: argparse.Namespace, memory: str, opt: str, C: int, t_attn: float) -> dict:
    inp = make(a.B, a.T, a.H, a.D, a.hidden, memory, True, grad=False)
    ginp = make(a.B, a.T, a.H, a.D, a.hidden, memory, True, grad=True)
    kw = {"chunk_size": C, "optimizer": opt}

    def fwd() -> None:
        with torch.no_grad():
            chunk_titans(**inp, **kw)

    def fwd_bwd() -> None:
        y, st = chunk_titans(**ginp, **kw)
        (y.sum() + st.weights[0].sum()).backward()

    t_fwd, t_fb = timeit(fwd, a.reps), timeit(fwd_bwd, a.reps)
    row = {"memory": memory, "optimizer": opt, "momentum": True, "chunk": C,
           "B": a.B, "T": a.T, "H": a.H, "D": a.D, "hidden": a.hidden if memory == "mlp" else None,
           "chunk_fwd_s": round(t_fwd, 5), "chunk_fwd_bwd_s": round(t_fb, 5),
           "chunk_fwd_bwd_over_sdpa_fwd_bwd": round(t_fb / t_attn, 3),
           "chunk_fwd_tokens_per_s": round(a.B * a.T / t_fwd)}  # fmt: skip
    if a.naive and C == a.chunk[-1]:

        def naive() -> None:
            with torch.no_grad():
                naive_chunk_titans(**inp, **kw)

        t_naive = timeit(naive, 1, warmup=0)
        row["naive_chunk_fwd_s"] = round(t_naive, 4)
        row["speedup_chunk_vs_naive_fwd"] = round(t_naive / t_fwd, 1)
        if a.naive_bwd:

            def naive_fwd_bwd() -> None:
                y, st = naive_chunk_titans(**ginp, **kw)
                (y.sum() + st.weights[0].sum()).backward()

            t_naive_fb = timeit(naive_fwd_bwd, 1, warmup=0)
            row["naive_chunk_fwd_bwd_s"] = round(t_naive_fb, 4)
            row["speedup_chunk_vs_naive_fwd_bwd"] = round(t_naive_fb / t_fb, 1)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--chunk", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--naive-bwd", action="store_true", help="also time the naive op's forward + backward"
    )
    p.add_argument("--memories", nargs="+", default=["linear", "mlp"])
    p.add_argument("--optimizers", nargs="+", default=["gd", "dgd"])
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    a = p.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if a.clock == "wall" else time.process_time
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    qa = torch.randn(a.B, a.H, a.T, a.D, requires_grad=True)

    def attn() -> None:
        F.scaled_dot_product_attention(qa, qa, qa, is_causal=True).sum().backward()

    t_attn = timeit(attn, a.reps)
    for memory in a.memories:
        for opt in a.optimizers:
            for C in a.chunk:
                print(json.dumps(bench_one(a, memory, opt, C, t_attn)), flush=True)
    print(json.dumps({"sdpa_causal_fwd_bwd_s": round(t_attn, 5), "threads": a.threads,
                      "clock": a.clock, "load_avg_1min": round(os.getloadavg()[0], 1),
                      "cpu_count": os.cpu_count(), "torch": torch.__version__}))  # fmt: skip


if __name__ == "__main__":
    main()
