"""Timing of the chunked linear-recurrence ops against their per-token references (timing only).

For the delta rule, the gated delta rule and retention, prints one JSON line per (op, pass, chunk
size): seconds per call of the naive recurrence and of the chunked form, and
``speedup = naive / chunk``, both measured in this process on the same inputs, interleaved, best
of ``--reps``. ``pass`` is ``fwd`` (no grad) or ``fwd_bwd`` (forward + backward through output and
final state); ``chunk_size`` ``auto`` is the op's default. ``--clock cpu`` measures process CPU
time instead of wall time: with one thread on a shared machine it estimates what an idle core
would see. Ratios only: absolute times on a shared machine are noise.

    .venv/bin/python benchmarks/bench_linear_ops.py --threads 2 --T 2048
    .venv/bin/python benchmarks/bench_linear_ops.py --threads 1 --clock cpu --chunk-sizes 16,32,64,auto
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nestlearn.ops.delta_rule import (
    chunk_delta_rule,
    chunk_gated_delta_rule,
    naive_recurrent_delta_rule,
    naive_recurrent_gated_delta_rule,
)
from nestlearn.ops.retention import chunk_retention, naive_recurrent_retention


def make_inputs(op: str, B: int, T: int, H: int, K: int, V: int, grad: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    inp = {"q": q, "k": k, "v": torch.randn(B, T, H, V, generator=gen)}
    if op == "retention":
        inp["gamma"] = 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float32))
    else:
        inp["beta"] = torch.rand(B, T, H, generator=gen)
        if op == "gated_delta_rule":
            inp["g"] = -torch.rand(B, T, H, generator=gen) * 0.1
    inp["initial_state"] = torch.randn(B, H, K, V, generator=gen) * 0.1
    if grad:
        for n, t in inp.items():
            if n != "gamma":
                t.requires_grad_()
    return inp


OPS: dict[str, tuple[Callable, Callable]] = {
    "delta_rule": (naive_recurrent_delta_rule, chunk_delta_rule),
    "gated_delta_rule": (naive_recurrent_gated_delta_rule, chunk_gated_delta_rule),
    "retention": (naive_recurrent_retention, chunk_retention),
}


def runner(fn: Callable, inp: dict, grad: bool, chunk_size: int | None) -> Callable[[], None]:
    def fwd() -> None:
        with torch.no_grad():
            fn(**inp, chunk_size=chunk_size)

    def fwd_bwd() -> None:
        o, S = fn(**inp, chunk_size=chunk_size)
        (o.square().sum() + S.square().sum()).backward()

    return fwd_bwd if grad else fwd


def best_interleaved(
    fns: list[Callable[[], None]], reps: int, clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    """Best-of-``reps`` seconds of each function, alternating them so load spikes hit all."""
    for f in fns:
        f()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, f in enumerate(fns):
            t0 = clock()
            f()
            best[i] = min(best[i], clock() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--K", type=int, default=64)
    p.add_argument("--V", type=int, default=64)
    p.add_argument("--chunk-sizes", default="auto", help="comma-separated sizes and/or 'auto'")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of the ops")
    p.add_argument("--passes", default="fwd,fwd_bwd")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    clock = time.perf_counter if a.clock == "wall" else time.process_time
    sizes = [None if c == "auto" else int(c) for c in a.chunk_sizes.split(",")]
    for op in a.ops.split(","):
        naive, chunk = OPS[op]
        for pss in a.passes.split(","):
            grad = pss == "fwd_bwd"
            inp = make_inputs(op, a.B, a.T, a.H, a.K, a.V, grad)
            fns = [runner(naive, inp, grad, None)]
            fns += [runner(chunk, inp, grad, c) for c in sizes]
            t_naive, *t_chunks = best_interleaved(fns, a.reps, clock)
            for c, t_chunk in zip(sizes, t_chunks):
                rec = {
                    "op": op, "pass": pss, "B": a.B, "T": a.T, "H": a.H, "K": a.K, "V": a.V,
                    "chunk_size": c or "auto", "threads": a.threads, "clock": a.clock,
                    "naive_s": round(t_naive, 4), "chunk_s": round(t_chunk, 4),
                    "speedup": round(t_naive / t_chunk, 1),
                }  # fmt: skip
                print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
