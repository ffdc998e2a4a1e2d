"""How much a busy machine slows a training step and decoding (issue 16, "a busy machine").

For each setting (torch threads x OpenMP wait policy) this measures a model's training
tokens/s and decoding tokens/s in a fresh process twice: on the machine as it is, then with
competing CPU-bound processes that this script starts itself (pure-Python busy loops, one by
default), and prints the slowdown. Every measurement is its own subprocess because the OpenMP
runtime reads ``OMP_WAIT_POLICY`` once, when it loads.

Usage::

    python benchmarks/bench_busy.py                          # hope-tiny, 4 x 512, 2 threads
    python benchmarks/bench_busy.py --model titans --competitors 2 --json busy.json

Run it on an otherwise idle machine: the "idle" column is only idle if nothing else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

SETTINGS: tuple[tuple[int, str], ...] = ((2, ""), (2, "PASSIVE"), (1, ""), (0, ""))
"""(threads, OMP_WAIT_POLICY); "" leaves the runtime's default (libgomp: spin, then sleep);
threads 0 = what the ``nestlearn`` CLI picks (``utils.threads.auto_threads``: one per core that
no other process keeps busy)."""


def _child(args: argparse.Namespace) -> int:
    import torch

    from nestlearn.bench import bench_model
    from nestlearn.utils.threads import auto_threads

    if args.threads == 0:
        args.threads = auto_threads(torch.get_num_threads())
    torch.set_num_threads(args.threads)
    rec = bench_model(
        args.model, batch=args.batch, seq=args.seq, steps=args.steps, warmup=1,
        decode_context=(args.decode,), decode_tokens=args.decode_tokens, peak_gflops=1.0,
        threads=args.threads,
    )  # fmt: skip
    print(json.dumps({"train": rec["train_tokens_per_s"], "decode": rec["decode_tokens_per_s"],
                      "threads": args.threads}))  # fmt: skip
    return 0


def _measure(args: argparse.Namespace, threads: int, policy: str) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, __file__, "--child", "--threads", str(threads), "--model", args.model,
           "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
           "--decode", str(args.decode), "--decode-tokens", str(args.decode_tokens)]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _busy(n: int) -> list[subprocess.Popen]:
    loop = "while True:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="hope-tiny", help="bench model spec (default hope-tiny)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--decode", type=int, default=256, help="decode context (default 256)")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--competitors", type=int, default=1, help="busy-loop processes (default 1)")
    p.add_argument("--settings", default=None,
                   help="threads:policy,... (default 2:,2:PASSIVE,1:)")  # fmt: skip
    p.add_argument("--json", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    settings = SETTINGS
    if args.settings:
        settings = tuple((int(s.split(":")[0]), s.split(":")[1] if ":" in s else "")
                         for s in args.settings.split(","))  # fmt: skip

    rows: list[dict[str, Any]] = []
    for threads, policy in settings:
        idle = _measure(args, threads, policy)
        procs = _busy(args.competitors)
        try:
            time.sleep(1.0)
            busy = _measure(args, threads, policy)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
        label = threads or f"auto ({idle['threads']} idle, {busy['threads']} busy)"
        row = {"threads": label, "policy": policy or "default", "idle": idle, "busy": busy,
               "train_slowdown": round(idle["train"] / busy["train"], 2),
               "decode_slowdown": round(idle["decode"] / busy["decode"], 2)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.model}, {args.batch}x{args.seq}, decode at {args.decode}; "
          f"{args.competitors} competing busy loop(s)\n")  # fmt: skip
    print("| threads | OMP_WAIT_POLICY | train tok/s idle | busy | slowdown "
          "| decode tok/s idle | busy | slowdown |\n|--:|---|--:|--:|--:|--:|--:|--:|")  # fmt: skip
    for r in rows:
        print(f"| {r['threads']} | {r['policy']} | {r['idle']['train']:,.0f} | "
              f"{r['busy']['train']:,.0f} | {r['train_slowdown']}x | {r['idle']['decode']:,.1f} | "
              f"{r['busy']['decode']:,.1f} | {r['decode_slowdown']}x |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
