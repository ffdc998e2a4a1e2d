"""Timing of the chunked SSD and TTT ops against their naive references (timing only; JSON lines).

For each op (Mamba2 SSD, TTT-Linear, TTT-MLP) and each mode (``fwd`` under ``no_grad``, ``fwdbwd``
= forward + backward of a random projection of the output), prints one JSON line with the best
wall time of the chunked op, of the naive per-token reference on the same inputs, and their
ratio. Every ratio is measured within one run, with chunked and naive calls interleaved so both
see the same background load; absolute times depend on the machine.

    .venv/bin/python benchmarks/bench_ssm_ops.py --threads 2 --T 2048

Default shapes are those of the tiny presets' layers at d=256: SSD with 8 heads of 64 channels,
state 64, one group, chunk 64; TTT with 4 heads of 64, mini-batch 16 (TTT-MLP hidden 256).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from nestlearn.ops.ssd import chunk_ssd, naive_ssd
from nestlearn.ops.ttt import TTTState, chunk_ttt, naive_ttt


def best_time(fn: Callable[[], object], reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def ssd_inputs(a: argparse.Namespace, grad: bool) -> tuple[dict, dict]:
    B, T, H, P, N = a.B, a.T, a.ssd_heads, a.ssd_head_dim, a.ssd_state
    inp = {
        "x": torch.randn(B, T, H, P),
        "dt": torch.rand(B, T, H) * 0.1 + 1e-3,
        "A": -torch.rand(H) * 4 - 0.5,
        "B": torch.randn(B, T, 1, N),
        "C": torch.randn(B, T, 1, N),
        "D": torch.ones(H),
        "initial_state": torch.zeros(B, H, P, N),
    }
    for t in inp.values():
        t.requires_grad_(grad)
    return inp, {"chunk_size": a.ssd_chunk}


def ttt_inputs(a: argparse.Namespace, grad: bool, kind: str) -> tuple[dict, dict]:
    B, T, H, Fd = a.B, a.T, a.ttt_heads, a.ttt_head_dim
    Fh = 4 * Fd
    q, k, v = (torch.randn(B, T, H, Fd) for _ in range(3))
    eta = torch.full((B, T, H), 0.5 / Fd)
    shapes = [(Fd, Fd), (Fd,)] if kind == "linear" else [(Fd, Fh), (Fh,), (Fh, Fd), (Fd,)]
    w = tuple(torch.randn(B, H, *s) * (0.02 if len(s) == 2 else 0.0) for s in shapes)
    lw, lb = torch.ones(H, Fd), torch.zeros(H, Fd)
    leaves = [q, k, v, eta, lw, lb, *w]
    for t in leaves:
        t.requires_grad_(grad)
    inp = {"q": q, "k": k, "v": v, "eta": eta, "ln_weight": lw, "ln_bias": lb,
           "initial_state": TTTState(w)}  # fmt: skip
    return inp, {"mini_batch_size": a.ttt_mini_batch}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--B", type=int, default=2, help="batch")
    p.add_argument("--T", type=int, default=2048, help="sequence length")
    p.add_argument("--ssd-heads", type=int, default=8)
    p.add_argument("--ssd-head-dim", type=int, default=64)
    p.add_argument("--ssd-state", type=int, default=64)
    p.add_argument("--ssd-chunk", type=int, default=64)
    p.add_argument("--ttt-heads", type=int, default=4)
    p.add_argument("--ttt-head-dim", type=int, default=64)
    p.add_argument("--ttt-mini-batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=3, help="timed repeats of the chunked op")
    p.add_argument("--naive-reps", type=int, default=2, help="timed repeats of the naive op")
    p.add_argument("--ops", nargs="+", default=["ssd", "ttt-linear", "ttt-mlp"])
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    ops = {
        "ssd": (chunk_ssd, naive_ssd, lambda g: ssd_inputs(a, g)),
        "ttt-linear": (chunk_ttt, naive_ttt, lambda g: ttt_inputs(a, g, "linear")),
        "ttt-mlp": (chunk_ttt, naive_ttt, lambda g: ttt_inputs(a, g, "mlp")),
    }
    for name in a.ops:
        fast, slow, make = ops[name]
        for mode in a.modes:
            inp, kw = make(mode == "fwdbwd")
            proj: list[torch.Tensor] = []

            def call(fn, inp=inp, kw=kw, mode=mode, proj=proj) -> None:
                if mode == "fwd":
                    with torch.no_grad():
                        fn(**inp, **kw)
                    return
                y, _ = fn(**inp, **kw)
                if not proj:
                    proj.append(torch.randn(y.shape))
                (y * proj[0]).sum().backward()

            # Interleaved, so both see the same background load; best time of each.
            call(fast)  # warm-up
            t_chunk = t_naive = float("inf")
            for r in range(max(a.reps, a.naive_reps)):
                if r < a.reps:
                    t_chunk = min(t_chunk, best_time(lambda f=fast: call(f), 1, warmup=0))
                if r < a.naive_reps:
                    t_naive = min(t_naive, best_time(lambda f=slow: call(f), 1, warmup=0))
            print(json.dumps({
                "op": name, "mode": mode, "B": a.B, "T": a.T, "threads": a.threads,
                "chunk_s": round(t_chunk, 4), "naive_s": round(t_naive, 4),
                "naive_over_chunk": round(t_naive / t_chunk, 2),
                "tokens_per_s_chunk": round(a.B * a.T / t_chunk, 1),
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
