"""Paper-shape training and decoding speed on one accelerator, in one table (issue 16).

Part 1, one row per model at width 1024, 24 layers, 4 x 2048 tokens, bfloat16:
transformer (Transformer++), titans, hope, hope-attention and gated-deltanet (fla backend where
flash-linear-attention is installed, else its torch chunked form). Columns: training tokens/s
(forward, loss, backward, AdamW step; median of ``--steps``), the ratio to the transformer,
peak memory of the training step, and decoding tokens/s at a 16K context (one sequence,
single-token steps after a chunked prefill).

Part 2: the peak memory of one ``hope-760m`` training step at 4 x 2048 (bfloat16).

Every row runs in this process, one after the other, so the ratios compare like with like; a
row that fails (out of memory, a missing kernel) is reported as such and the others go on.

Usage::

    python benchmarks/gpu_bench.py                       # CUDA, paper shape (< 5 min on an H100)
    python benchmarks/gpu_bench.py --device cpu          # tiny shape, for CI and a dry run
    python benchmarks/gpu_bench.py --json out.json       # also write the records

``--device cpu`` switches to a tiny shape (width 64, 2 layers, 2 x 128 tokens, float32, decode
at 256) unless the shape flags are given; the CPU figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from typing import Any

import torch

from nestlearn.bench import bench_model

ROWS: tuple[tuple[str, str], ...] = (
    ("transformer", "transformer"),
    ("titans", "titans"),
    ("hope", "hope"),
    ("hope-attention", "hope-attention"),
    ("gated-deltanet", "gated-deltanet:backend=auto"),
)
"""(row name, ``bench_model`` spec); gated-deltanet's ``auto`` backend takes fla when present."""

PAPER = {"dim": 1024, "layers": 24, "batch": 4, "seq": 2048, "dtype": "bfloat16",
         "decode": 16384, "decode_tokens": 32, "steps": 5, "warmup": 2}  # fmt: skip
TINY = {"dim": 64, "layers": 2, "batch": 2, "seq": 128, "dtype": "float32",
        "decode": 256, "decode_tokens": 4, "steps": 2, "warmup": 1}  # fmt: skip


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _row(name: str, spec: str, shape: dict[str, Any], device: torch.device) -> dict[str, Any]:
    _free(device)
    t0 = time.perf_counter()
    try:
        rec = bench_model(
            spec, dim=shape["dim"], layers=shape["layers"], vocab=32000 if device.type == "cuda"
            else 512, batch=shape["batch"], seq=shape["seq"], steps=shape["steps"],
            warmup=shape["warmup"], decode_context=(shape["decode"],),
            decode_tokens=shape["decode_tokens"], dtype=shape["dtype"], device=device,
            peak_gflops=1.0,
        )  # fmt: skip
    except (RuntimeError, ValueError, ImportError) as exc:  # OOM is a RuntimeError
        msg = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return {"model": name, "error": msg, "wall_s": round(time.perf_counter() - t0, 1)}
    return {
        "model": name,
        "params": rec["params"],
        "train_tokens_per_s": rec["train_tokens_per_s"],
        "peak_mem_mb": rec["peak_mem_mb"],
        "decode_tokens_per_s": rec["decode_tokens_per_s"],
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def step_memory(preset: str, shape: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Peak memory of one training step (forward, backward, AdamW) of ``preset``."""
    from nestlearn.models import build_model, preset_config
    from nestlearn.optim import OptimConfig, build_optimizer

    _free(device)
    dtype = getattr(torch, shape["dtype"])
    over = {} if device.type == "cuda" else {"dim": shape["dim"], "n_layers": shape["layers"]}
    cfg = preset_config(preset, vocab_size=32000 if device.type == "cuda" else 512, **over)
    t0 = time.perf_counter()
    try:
        net = build_model(cfg, device=device, seed=0).to(dtype=dtype)
        opt = build_optimizer(net, OptimConfig())
        idx = torch.randint(0, cfg.vocab_size, (shape["batch"], shape["seq"]), device=device)
        logits, _ = net(idx)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), idx.flatten())
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        params = net.num_params()
        del net, opt, logits, loss
    except RuntimeError as exc:
        return {"model": preset, "error": str(exc).splitlines()[0][:160]}
    return {"model": preset, "params": params, "peak_mem_mb": round(peak, 1),
            "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip


def format_table(rows: list[dict[str, Any]], shape: dict[str, Any], device: str) -> str:
    base = next((r.get("train_tokens_per_s") for r in rows if r["model"] == "transformer"), None)
    head = (
        f"device {device}; width {shape['dim']}, {shape['layers']} layers, "
        f"{shape['batch']}x{shape['seq']} tokens, {shape['dtype']}; decode at {shape['decode']}\n\n"
        "| model | params | train tok/s | vs transformer | peak memory (MB) | decode tok/s |\n"
        "|---|--:|--:|--:|--:|--:|"
    )
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | failed: {r['error']} | | | |")
            continue
        tps = r["train_tokens_per_s"]
        ratio = f"{tps / base:.3f}x" if base else "-"
        dec = r["decode_tokens_per_s"]
        lines.append(
            f"| {r['model']} | {r['params']:,} | {tps:,.0f} | {ratio} | {r['peak_mem_mb']:,.0f} "
            f"| {'-' if dec is None else f'{dec:,.1f}'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (tiny shape)")
    p.add_argument("--models", default=",".join(n for n, _ in ROWS), help="rows to run")
    for key in ("dim", "layers", "batch", "seq", "decode", "steps"):
        p.add_argument(f"--{key}", type=int, default=None, help=f"override the shape's {key}")
    p.add_argument("--dtype", default=None, help="bfloat16 (GPU default) or float32")
    p.add_argument("--memory-preset", default="hope-760m",
                   help="part 2: the preset whose one training step's peak memory is reported")  # fmt: skip
    p.add_argument("--skip-memory", action="store_true", help="skip part 2")
    p.add_argument("--json", default=None, help="also write the records to this file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here; run with --device cpu for the tiny shape",
              file=sys.stderr)  # fmt: skip
        return 2
    shape = dict(PAPER if device.type == "cuda" else TINY)
    for key in ("dim", "layers", "batch", "seq", "decode", "steps", "dtype"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    specs = dict(ROWS)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in specs]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(specs)}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    t0 = time.perf_counter()
    rows = []
    for name in names:
        rows.append(_row(name, specs[name], shape, device))
        print(json.dumps(rows[-1]), flush=True)
    print()
    print(format_table(rows, shape, str(device)))
    mem = None
    if not args.skip_memory:
        mem_shape = {**shape, "batch": shape["batch"], "seq": shape["seq"]}
        mem = step_memory(args.memory_preset, mem_shape, device)
        where = "" if device.type == "cuda" else " (tiny shape on CPU: peak RSS of the process)"
        if "error" in mem:
            print(f"\n{args.memory_preset}, one training step at {shape['batch']}x{shape['seq']}"
                  f" {shape['dtype']}: failed: {mem['error']}")  # fmt: skip
        else:
            print(f"\n{args.memory_preset} ({mem['params']:,} params), one training step at "
                  f"{shape['batch']}x{shape['seq']} {shape['dtype']}: peak memory "
                  f"{mem['peak_mem_mb']:,.0f} MB{where}")  # fmt: skip
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "shape": shape, "rows": rows, "memory": mem}, f,
                      indent=1)  # fmt: skip
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
