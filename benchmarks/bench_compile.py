"""Eager vs compiled chunk steps (``nestlearn.ops.compiled``) for one model, in one process.

Times a training step (forward, cross-entropy, backward; no optimizer) eagerly and with the
chunk steps compiled, alternating the two (median of each); the first two compiled steps, which
pay the compile, are timed apart. Checks the compiled step's loss and gradients against eager.

    python benchmarks/bench_compile.py hope --batch 4 --seq 512 --threads 2

Set ``TORCHINDUCTOR_CACHE_DIR`` to an empty folder to time a cold compile. Pause other work on
the machine for the timings (docs/benchmarks.md, "Compiled chunk steps").
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from nestlearn.bench import resolve_config
from nestlearn.models import build_model
from nestlearn.ops import compiled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="family or preset (bench spec syntax)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per mode, alternating (median)")
    ap.add_argument("--mode", default="default", choices=compiled.MODES)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg, _ = resolve_config(a.model, max_seq_len=a.seq)
    net = build_model(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), generator=g)
    tg = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), generator=g)

    def step() -> tuple[float, list[torch.Tensor]]:
        net.zero_grad(set_to_none=True)
        logits, _ = net(idx)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tg.flatten())
        loss.backward()
        return loss.item(), [p.grad.clone() for p in net.parameters() if p.grad is not None]

    def once() -> float:
        t = time.perf_counter()
        step()
        return time.perf_counter() - t

    ref = step()
    step()  # eager warm-up
    compiled.enable(a.mode)
    t0 = time.perf_counter()
    got = step()
    step()
    t_first = time.perf_counter() - t0
    # eager and compiled steps alternate, so drift on the machine hits both alike
    te, tc = [], []
    for _ in range(a.steps):
        compiled.disable()
        te.append(once())
        compiled.enable(a.mode)
        tc.append(once())
    compiled.disable()
    t_eager, t_comp = sorted(te)[len(te) // 2], sorted(tc)[len(tc) // 2]
    err = max(
        ((x - y).abs().max() / y.abs().max().clamp_min(1e-12)).item()
        for x, y in zip(got[1], ref[1])
    )
    tok = a.batch * a.seq
    print(f"{a.model} {a.batch}x{a.seq}, {a.threads} threads: first two compiled steps "
          f"{t_first:.1f} s; eager {t_eager:.3f} s ({tok / t_eager:,.0f} tok/s), compiled "
          f"{t_comp:.3f} s ({tok / t_comp:,.0f} tok/s), {t_eager / t_comp:.2f}x; loss "
          f"{ref[0]:.6f} vs {got[0]:.6f}, max relative gradient error {err:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
