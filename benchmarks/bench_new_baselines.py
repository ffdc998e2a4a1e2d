"""Chunked vs naive speed of the issue-18 ops at T = 2048 on CPU, measured in one process.

Ops: the RWKV-7 DPLR delta rule, Comba, and the generic nested memory for the Moneta, Yaad, Memora
and DLA specs. Each line is one JSON object: forward + backward seconds of the per-token reference
and of the chunked form (best of ``--repeats``, the reference once), and their ratio. Timing only;
correctness is in ``tests/ops``.

    python benchmarks/bench_new_baselines.py [--seq 2048] [--threads 1] [--chunks 16,32,64]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nestlearn.models.families.miras import SPECS
from nestlearn.ops.comba import chunk_comba, naive_recurrent_comba
from nestlearn.ops.nested import (
    MemorySpec,
    NestedState,
    chunk_nested,
    init_params,
    naive_nested,
    project,
)
from nestlearn.ops.rwkv7 import chunk_rwkv7, naive_recurrent_rwkv7


def _time(fn: Callable[[], tuple], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sum(o.float().sum() for o in out if o is not None).backward()
        best = min(best, time.perf_counter() - t0)
    return best


def linear_ops(T: int, chunks: list[int], repeats: int) -> list[dict]:
    B, H, K = 1, 4, 64
    gen = torch.Generator().manual_seed(0)

    def rn(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen)

    kap = F.normalize(rn(B, T, H, K), dim=-1)
    rw = {"r": rn(B, T, H, K), "w": -0.6 * torch.rand(B, T, H, K, generator=gen),
          "k": F.normalize(rn(B, T, H, K), dim=-1), "v": rn(B, T, H, K), "a": -kap,
          "b": kap * torch.rand(B, T, H, K, generator=gen)}  # fmt: skip
    k = F.normalize(rn(B, T, H, K), dim=-1)
    cb = {"q": rn(B, T, H, K), "k": k, "v": rn(B, T, H, K), "p": 0.7 * k,
          "g": -0.1 * torch.rand(B, T, H, generator=gen),
          "beta": torch.rand(B, T, H, generator=gen)}  # fmt: skip
    out = []
    for name, naive, chunk, inp in (("rwkv7", naive_recurrent_rwkv7, chunk_rwkv7, rw),
                                    ("comba", naive_recurrent_comba, chunk_comba, cb)):  # fmt: skip
        out += _linear_pair(name, naive, chunk, inp, T, chunks, repeats)
    return out


def _linear_pair(name: str, naive, chunk, inp: dict, T: int, chunks: list[int],  # noqa: ANN001
                 repeats: int) -> list[dict]:  # fmt: skip
    def leaves() -> dict:
        return {n: t.clone().requires_grad_() for n, t in inp.items()}

    t_naive = _time(lambda: naive(**leaves()), 1)
    out = []
    for C in chunks:
        t_chunk = _time(lambda C=C: chunk(**leaves(), chunk_size=C), repeats)
        out.append({"op": name, "seq": T, "chunk": C, "naive_s": round(t_naive, 4),
                    "chunk_s": round(t_chunk, 4), "ratio": round(t_naive / t_chunk, 1)})  # fmt: skip
    return out


def nested_ops(T: int, chunks: list[int], repeats: int) -> list[dict]:
    B, H, D = 1, 4, 64
    gen = torch.Generator().manual_seed(0)
    out = []
    for fam in ("moneta", "yaad", "memora", "dla"):
        base = MemorySpec(**SPECS[fam])
        inp = {"q": F.normalize(torch.randn(B, T, H, D, generator=gen), dim=-1),
               "k": F.normalize(torch.randn(B, T, H, D, generator=gen), dim=-1),
               "v": torch.randn(B, T, H, D, generator=gen),
               "lr": 0.01 * torch.rand(B, T, H, generator=gen)}  # fmt: skip
        if base.retention != "none":
            inp["retain"] = 1 - 0.01 * torch.rand(B, T, H, generator=gen)
        if base.objective == "huber":
            inp["delta"] = 0.5 + torch.rand(B, T, H, generator=gen)
        ps = [p.float().expand(B, *p.shape) for p in init_params(base, D, D, H, generator=gen)]
        norm = {}
        if base.norm == "layernorm":
            norm = {"norm_weight": torch.ones(H, D), "norm_bias": torch.zeros(H, D)}
        for C in chunks:
            spec = MemorySpec(**{**SPECS[fam], "chunk_size": C})
            args = (spec, inp, ps, norm)
            t_naive = _time(lambda a=args: _run_nested(naive_nested, *a), 1)
            t_chunk = _time(lambda a=args: _run_nested(chunk_nested, *a), repeats)
            out.append({"op": f"nested:{fam}", "seq": T, "chunk": C, "naive_s": round(t_naive, 4),
                        "chunk_s": round(t_chunk, 4), "ratio": round(t_naive / t_chunk, 1)})  # fmt: skip
    return out


def _run_nested(fn, spec: MemorySpec, inp: dict, ps: list, norm: dict) -> tuple:  # noqa: ANN001
    x = {n: t.clone().requires_grad_() for n, t in inp.items()}
    pp = [p.clone().requires_grad_() for p in ps]
    st = NestedState(project(spec, pp), tuple(pp)) if spec.mirror else NestedState(tuple(pp))
    y, s = fn(spec, **x, state=st, **norm)
    return (y, *s.params)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--chunks", default="16,32")
    p.add_argument("--only", choices=["linear", "nested"], default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    chunks = [int(c) for c in a.chunks.split(",")]
    rows = []
    if a.only in (None, "linear"):
        rows += linear_ops(a.seq, chunks, a.repeats)
    if a.only in (None, "nested"):
        rows += nested_ops(a.seq, chunks, a.repeats)
    for r in rows:
        print(json.dumps({**r, "threads": a.threads}), flush=True)


if __name__ == "__main__":
    main()
