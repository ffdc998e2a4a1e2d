"""``nestlearn bench``: throughput, memory and MFU of model families (:mod:`nestlearn.bench`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from nestlearn.bench import (
    DEFAULT_DIM,
    DEFAULT_LAYERS,
    DEFAULT_VOCAB,
    DTYPES,
    bench_models,
)

COMMAND = "bench"
HELP = "throughput, memory and MFU of model families"
DESCRIPTION = None


def format_table(records: list[dict[str, Any]]) -> str:
    """An aligned, human-readable table of ``records`` with the ratio columns."""

    def num(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    rows = [
        (
            r["model"],
            num(r["params"] / 1e6, ".2f") + "M",
            num(r["train_tokens_per_s"], ",.0f"),
            num(r["train_vs_first"], ".2f") + ("x" if r["train_vs_first"] is not None else ""),
            num(r["fwd_tokens_per_s"], ",.0f"),
            num(r["fwd_vs_first"], ".2f") + ("x" if r["fwd_vs_first"] is not None else ""),
            num(r["decode_tokens_per_s"], ",.1f"),
            num(r["decode_vs_first"], ".2f") + ("x" if r["decode_vs_first"] is not None else ""),
            num(r["peak_mem_mb"], ",.0f"),
            num(r["gflops"], ".2f"),
            num(100 * r["mfu"], ".1f") + "%",
        )
        for r in records
    ]
    ctx = records[0]["decode_context"] if records else None
    header = ("model", "params", "train tok/s", "vs 1st", "fwd tok/s", "vs 1st",
              f"decode tok/s@{ctx}", "vs 1st", "peak MB", "GFLOP/s", "MFU")  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))
        )
    ]
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
            )
        )
    extra = [
        f"{r['model']}: decode tok/s " + ", ".join(f"{k}: {num(v, ',.1f')}" for k, v in at.items())
        for r in records
        if len(at := r["decode_tokens_per_s_at"]) > 1
    ]
    if records:
        r0 = records[0]
        lines.insert(
            0,
            f"batch {r0['batch']} x seq {r0['seq']}, {r0['dtype']} on {r0['device']}, "
            f"{r0['threads']} threads; matmul peak {r0['peak_gflops']:.1f} GFLOP/s; "
            "MFU = train GFLOP/s / peak",
        )
    return "\n".join(lines + extra)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 1024,16384, got {text!r}"
        ) from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"context lengths must be >= 0, got {text!r}")
    return values


def add_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``nestlearn bench`` options to ``parser``."""
    p = parser
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="family, preset, or 'name:key=value,...'; repeat to compare "
        "(ratios are against the first). Default: transformer",
    )
    p.add_argument(
        "--dim",
        type=int,
        default=None,
        help=f"model width (default {DEFAULT_DIM}, or the preset's)",
    )
    p.add_argument(
        "--layers",
        type=int,
        default=None,
        help=f"number of blocks (default {DEFAULT_LAYERS}, or the preset's)",
    )
    p.add_argument(
        "--vocab",
        type=int,
        default=None,
        help=f"vocabulary size (default {DEFAULT_VOCAB}, or the preset's)",
    )
    p.add_argument("--batch", type=int, default=4, help="sequences per step (default 4)")
    p.add_argument("--seq", type=int, default=512, help="tokens per sequence (default 512)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's current setting)",
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps; the median is reported")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument(
        "--decode-context",
        type=_int_list,
        default=[1024],
        metavar="C[,C...]",
        help="decode context length(s); the first is decode_tokens_per_s, all are "
        "in decode_tokens_per_s_at; 0 skips decoding (default 1024)",
    )
    p.add_argument(
        "--decode-batch", type=int, default=1, help="sequences decoded together (default 1)"
    )
    p.add_argument(
        "--decode-tokens", type=int, default=32, help="timed single-token decode steps (default 32)"
    )
    p.add_argument(
        "--naive",
        action="store_true",
        help="use the naive reference ops (mixer option naive=True) in families "
        "that declare supports_naive",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model for the train and forward measurements: one compiled "
        "chunk step for the chunked memories (Titans, Hope, CMS), other blocks whole; the "
        "warm-up steps absorb the compile; decoding stays eager",
    )
    p.add_argument(
        "--peak-size",
        type=int,
        default=None,
        help="matmul size for the peak measurement (default 2048 CPU, 8192 CUDA)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per model per line")


def run(args: argparse.Namespace) -> int:
    """Run ``nestlearn bench`` from parsed :func:`add_args` options; returns the exit code."""
    records = bench_models(
        args.models or ["transformer"],
        threads=args.threads,
        dtype=args.dtype,
        device=args.device,
        peak_size=args.peak_size,
        dim=args.dim,
        layers=args.layers,
        vocab=args.vocab,
        batch=args.batch,
        seq=args.seq,
        steps=args.steps,
        warmup=args.warmup,
        decode_context=args.decode_context,
        decode_batch=args.decode_batch,
        decode_tokens=args.decode_tokens,
        naive=args.naive,
        compile=args.compile,
    )
    if args.json:
        for rec in records:
            print(json.dumps(rec), flush=True)
    else:
        print(format_table(records), flush=True)
    return 0
