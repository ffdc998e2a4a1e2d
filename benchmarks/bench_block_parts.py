"""Time the mixer and the FFN/CMS of one block alone (forward + backward), at several shapes.

Splits a model's per-token cost between its two halves, e.g. Hope's self-modifying Titans and
its Continuum Memory System, and shows how each scales with batch and length::

    python benchmarks/bench_block_parts.py --model hope-tiny --shape 4x512 --shape 1x512 \\
        --shape 1x4096 --threads 2

Each line: the median of ``--steps`` timed calls after one warm-up, tokens/s of each part, and a
whole-model estimate ``B T / (layers x (t_mixer + t_ffn))`` (embedding and head left out).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from nestlearn.models import build_model, preset_config


def _time(fn, steps: int) -> float:
    fn()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="hope-tiny", help="a preset")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4, help="for the whole-model estimate")
    p.add_argument("--shape", action="append", help="BxT (repeatable; default 4x512)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = dataclasses.replace(preset_config(a.model), vocab_size=256, dim=a.dim, n_layers=1)
    block = build_model(cfg, device=torch.device("cpu"), seed=0).blocks[0]
    for shape in a.shape or ["4x512"]:
        B, T = (int(v) for v in shape.lower().split("x"))
        x = torch.randn(B, T, a.dim, requires_grad=True)

        def run(mod, x=x):
            def f():
                y = mod(x)
                (y[0] if isinstance(y, tuple) else y).sum().backward()

            return f

        tm = _time(run(block.mixer), a.steps)
        tf = _time(run(block.ffn), a.steps) if block.ffn is not None else 0.0
        print(
            f"{a.model} {B}x{T}: mixer {tm * 1e3:.0f} ms ({B * T / tm:,.0f} tok/s), "
            f"ffn {tf * 1e3:.0f} ms ({B * T / tf if tf else float('inf'):,.0f} tok/s); "
            f"{a.layers}-block estimate {B * T / (a.layers * (tm + tf)):,.0f} tok/s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
