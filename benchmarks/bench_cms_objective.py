"""Training throughput of CMS ``objective=ntp`` against ``objective=next`` through the Trainer
(timing only; prints JSON).

Both configs are the same model (a preset, shrunk by ``--dim`` / ``--layers``) trained by
:class:`nestlearn.train.Trainer` on random bytes; they alternate round by round in one process
(``--rounds`` rounds of ``--steps`` optimizer steps each, the first step of every round dropped
as warm-up), and the result is the ratio of the median tokens/s per step. ``mode=outer`` is timed
too (a static forward plus the schedule's hook). Run it twice on a busy machine.

    .venv/bin/python benchmarks/bench_cms_objective.py --preset hope-tiny --dim 64 --layers 2
    .venv/bin/python benchmarks/bench_cms_objective.py --preset hope-attention-tiny --dim 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import torch

from nestlearn.train import Trainer, resolve_config
from nestlearn.train.batches import ArrayTokens


class _Bytes:
    name, vocab_size, bos_id, eos_id = "bench-bytes", 256, None, None

    def token_byte_lengths(self) -> list[int]:
        return [1] * 256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="hope-tiny")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    toks = np.random.default_rng(0).integers(0, 256, 200_000).astype(np.int64)
    data = (_Bytes(), ArrayTokens(toks[:190_000]), ArrayTokens(toks[190_000:]))
    base = [f"model.dim={a.dim}", f"model.n_layers={a.layers}", "model.n_heads=2",
            f"model.max_seq_len={a.seq}", f"data.seq_len={a.seq}", f"data.batch_size={a.batch}",
            f"train.steps={a.steps}", "train.eval_every=0", "train.ckpt_every=0",
            "train.eval_tokens=256", "train.progress=false", f"train.threads={a.threads}"]  # fmt: skip
    configs = {
        "next": [],
        "ntp": ["model.mixer.cms.objective=ntp"],
        "outer": ["model.mixer.cms.mode=outer"],
    }
    rates: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(a.rounds):
        for name, extra in configs.items():
            cfg = resolve_config(a.preset, None, base + extra)
            with tempfile.TemporaryDirectory() as d:
                tr = Trainer(cfg, run_dir=d, data=data)
                times: list[float] = []
                tr.on_step_end = lambda t, step, loss, times=times: times.append(
                    time.perf_counter()
                )
                t0 = time.perf_counter()
                tr.fit()
                dts = np.diff([t0, *times])[1:]  # drop the first step (warm-up)
                rates[name] += [a.batch * a.seq / dt for dt in dts]
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(json.dumps({
        "preset": a.preset, "dim": a.dim, "layers": a.layers, "batch": a.batch, "seq": a.seq,
        "threads": a.threads, "tokens_per_s": {k: round(v, 1) for k, v in med.items()},
        "ntp_vs_next": round(med["ntp"] / med["next"], 4),
        "outer_vs_next": round(med["outer"] / med["next"], 4),
        "steps_timed": {k: len(v) for k, v in rates.items()},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
