"""The measurements of ``nestlearn bench`` (the package docstring lists them, in order)."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from nestlearn.bench.spec import resolve_config
from nestlearn.memory.cms import attach_outer_schedule
from nestlearn.models import FAMILIES, ModelConfig, build_model
from nestlearn.models.compiling import compile_model
from nestlearn.ops import compiled
from nestlearn.optim.build import build_optimizer
from nestlearn.optim.config import OptimConfig

logger = logging.getLogger(__name__)

SPEC_FIELDS: tuple[str, ...] = (
    "model", "params", "dim", "layers", "vocab", "batch", "seq",
    "train_tokens_per_s", "fwd_tokens_per_s", "decode_tokens_per_s",
    "peak_mem_mb", "flops_per_token", "gflops", "peak_gflops", "mfu",
)  # fmt: skip
"""The fields of issue 2 item 8, in output order."""

EXTRA_FIELDS: tuple[str, ...] = (
    "train_vs_first", "fwd_vs_first", "decode_vs_first",
    "decode_context", "decode_batch", "decode_tokens_per_s_at",
    "family", "threads", "dtype", "device", "compile", "naive",
)  # fmt: skip
"""Documented extras after the spec fields (``docs/benchmarks.md`` explains each)."""

RATIO_FIELDS: dict[str, str] = {
    "train_vs_first": "train_tokens_per_s",
    "fwd_vs_first": "fwd_tokens_per_s",
    "decode_vs_first": "decode_tokens_per_s",
}

PREFILL_SEGMENT = 2048
"""Prefill is fed in segments of at most this many tokens (a power of two, so segments stay
aligned with any power-of-two memory chunk size) to bound the logits' memory at long context."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------- measurements
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], Any], steps: int, warmup: int, device: torch.device) -> float:
    """Median wall time (s) of ``steps`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_matmul_peak(
    size: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    repeats: int = 5,
) -> float:
    """Best achieved GFLOP/s of ``[n, n] @ [n, n]`` matmuls (``2 n^3`` FLOPs each).

    Uses the current ``torch.get_num_threads()``; ``size`` defaults to 2048 on CPU and 8192 on
    CUDA (large enough to be compute-bound). One untimed warm-up call, then the best of
    ``repeats``: the best, not the median, because the peak is what the machine *can* do.
    """
    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 2048)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    torch.mm(a, b)
    _sync(device)
    best, spent, calls = math.inf, 0.0, 0
    # at least `repeats` calls and 0.2 s of work, so a small `size` is not one noisy sample
    while calls < repeats or (spent < 0.2 and calls < 100):
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        dt = time.perf_counter() - t0
        best, spent, calls = min(best, dt), spent + dt, calls + 1
    return 2 * n**3 / best / 1e9


def _reset_peak_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        # "5" resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0, proc(5)).
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        logger.debug("cannot reset the peak RSS; peak_mem_mb is the process lifetime peak")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            match = re.search(r"^VmHWM:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
        if match:
            return int(match.group(1)) / 1024
    except OSError:
        pass
    import resource  # not on Windows; macOS reports bytes, Linux kB

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if rss > 2**32 else rss / 1024


def _train_and_fwd_times(
    run: torch.nn.Module,
    idx: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    warmup: int,
    device: torch.device,
) -> tuple[float, float]:
    """Median seconds of a train step (forward, loss, backward, AdamW) and of a forward.

    ``idx, targets: [B, T]``. The optimizer (and its state) is freed on return, before
    decoding is measured.
    """
    opt = build_optimizer(run, OptimConfig())
    attach_outer_schedule(run, opt)  # cms.mode=outer: time the step a run takes

    def train_step() -> None:
        logits, _ = run(idx)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def fwd_step() -> None:
        with torch.no_grad():
            run(idx)

    run.train()
    train_s = _median_time(train_step, steps, warmup, device)
    run.eval()
    fwd_s = _median_time(fwd_step, steps, warmup, device)
    return train_s, fwd_s


@contextlib.contextmanager
def _eager() -> Iterator[None]:
    """Run compiled modules and chunk steps eagerly inside the block (restored after)."""
    mode = compiled.enabled_mode()
    compiled.disable()
    stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    try:
        if stance is None:
            yield
        else:
            with stance("force_eager"):
                yield
    finally:
        if mode is not None:
            compiled.enable(mode)


def _decode_tokens_per_s(
    model: torch.nn.Module,
    *,
    vocab: int,
    context: int,
    batch: int,
    tokens: int,
    warmup: int,
    device: torch.device,
    gen: torch.Generator,
) -> float:
    """Tokens/s of single-token decode steps after prefilling ``context`` tokens."""
    ids = torch.randint(0, vocab, (batch, context + warmup + tokens), generator=gen).to(device)
    with torch.no_grad():
        state = model.init_state(batch, device=device)
        for start in range(0, context, PREFILL_SEGMENT):
            _, state = model(ids[:, start : min(context, start + PREFILL_SEGMENT)], state=state)
        pos = context
        times = []
        for i in range(warmup + tokens):
            _sync(device)
            t0 = time.perf_counter()
            _, state = model(ids[:, pos : pos + 1], state=state)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            pos += 1
    del state
    return batch / statistics.median(times)


def _sig(x: float | None, digits: int = 4) -> float | None:
    if x is None:
        return None
    return float(f"{x:.{digits}g}")


def bench_model(
    model: str | ModelConfig = "transformer",
    *,
    dim: int | None = None,
    layers: int | None = None,
    vocab: int | None = None,
    batch: int = 4,
    seq: int = 512,
    steps: int = 10,
    warmup: int = 3,
    decode_context: Sequence[int] = (1024,),
    decode_batch: int = 1,
    decode_tokens: int = 32,
    naive: bool = False,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    compile: bool = False,
    threads: int | None = None,
    peak_gflops: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure one model; returns a record with :data:`SPEC_FIELDS` and :data:`EXTRA_FIELDS`.

    ``model`` is a family name, a preset name, ``"name:key=value,..."`` or a
    :class:`ModelConfig`. Training and forward passes run on ``idx: [batch, seq]``; decoding
    runs at each length in ``decode_context`` (empty or ``0`` skips it) with ``decode_batch``
    sequences, timing ``decode_tokens`` single-token steps. ``peak_gflops`` is measured here
    when not given (pass it to share one measurement across models). The ``*_vs_first`` ratio
    fields are ``1.0`` here; :func:`bench_models` fills them across models.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    for key, value in (("batch", batch), ("seq", seq), ("steps", steps),
                       ("decode_batch", decode_batch), ("decode_tokens", decode_tokens)):  # fmt: skip
        if value <= 0:
            raise ValueError(f"{key} must be a positive integer, got {value}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    contexts = [int(c) for c in decode_context if int(c) > 0]
    torch_dtype, device = DTYPES[dtype], torch.device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    if peak_gflops is None:
        peak_gflops = measure_matmul_peak(dtype=torch_dtype, device=device)

    longest = max([seq, *(c + warmup + decode_tokens for c in contexts)])
    cfg, naive_applied = resolve_config(
        model, dim=dim, layers=layers, vocab=vocab, max_seq_len=longest, naive=naive
    )
    name = model if isinstance(model, str) else cfg.family
    family = FAMILIES[cfg.family]
    _reset_peak_memory(device)

    net = build_model(cfg, device=device, seed=seed).to(dtype=torch_dtype)
    if compile:  # chunk steps compiled for the chunked memories, other blocks whole
        for line in compile_model(net):
            logger.info("%s: compile %s", name, line)
    run = net
    gen = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen).to(device)
    targets = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen).to(device)
    logger.info("%s: %d params, train %d steps", name, net.num_params(), steps)
    train_s, fwd_s = _train_and_fwd_times(run, idx, targets, steps, warmup, device)

    decode_at: dict[str, float | None] = {}
    for c in contexts:
        if not family.supports_decode:
            decode_at[str(c)] = None
            continue
        logger.info("%s: decode at context %d", name, c)
        # Decoding runs eagerly even with --compile: a growing state recompiles every step.
        with _eager():
            decode_at[str(c)] = _decode_tokens_per_s(
                net, vocab=cfg.vocab_size, context=c, batch=decode_batch, tokens=decode_tokens,
                warmup=warmup, device=device, gen=gen,
            )  # fmt: skip
    peak_mem = _peak_memory_mb(device)
    if compile:
        compiled.disable()  # the next model of a bench run decides for itself

    train_tps = batch * seq / train_s
    flops = int(net.flops_per_token(seq))
    gflops = train_tps * flops / 1e9
    first_decode = decode_at[str(contexts[0])] if contexts else None
    record: dict[str, Any] = {
        "model": name,
        "params": net.num_params(),
        "dim": cfg.dim,
        "layers": cfg.n_layers,
        "vocab": cfg.vocab_size,
        "batch": batch,
        "seq": seq,
        "train_tokens_per_s": _sig(train_tps),
        "fwd_tokens_per_s": _sig(batch * seq / fwd_s),
        "decode_tokens_per_s": _sig(first_decode),
        "peak_mem_mb": round(peak_mem, 1),
        "flops_per_token": flops,
        "gflops": _sig(gflops),
        "peak_gflops": _sig(peak_gflops),
        "mfu": _sig(gflops / peak_gflops),
        "train_vs_first": 1.0,
        "fwd_vs_first": 1.0,
        "decode_vs_first": 1.0 if first_decode is not None else None,
        "decode_context": contexts[0] if contexts else None,
        "decode_batch": decode_batch,
        "decode_tokens_per_s_at": {k: _sig(v) for k, v in decode_at.items()},
        "family": cfg.family,
        "threads": torch.get_num_threads(),
        "dtype": dtype,
        "device": str(device),
        "compile": compile,
        "naive": naive_applied,
    }
    del net, run
    gc.collect()
    return record


def _warn_if_busy() -> None:
    """Warn when other processes load the CPUs: OpenMP threads then wait on descheduled
    peers and small steps (batch-1 decoding above all) slow down many times over."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return
    cores = os.cpu_count() or 1
    if load > 0.5 * cores:
        logger.warning(
            "the machine is busy (1-min load average %.1f on %d cores): absolute timings will "
            "be low and noisy; compare ratios, or rerun when it is idle",
            load,
            cores,
        )


def add_ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set each record's ``*_vs_first`` fields to its value over the first record's.

    A ratio is ``None`` where either value is missing (e.g. a family that cannot decode).
    Records are updated in place and returned.
    """
    if not records:
        return records
    first = records[0]
    for rec in records:
        for ratio, key in RATIO_FIELDS.items():
            a, b = rec.get(key), first.get(key)
            rec[ratio] = _sig(a / b) if a is not None and b else None
    return records


def bench_models(
    models: Sequence[str | ModelConfig],
    *,
    threads: int | None = None,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    peak_size: int | None = None,
    peak_gflops: float | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Benchmark several models in this process, sharing one matmul-peak measurement.

    ``kwargs`` go to :func:`bench_model`. Returns one record per model, ratios filled against
    the first.
    """
    if not models:
        raise ValueError("give at least one model to benchmark")
    if threads is not None:
        torch.set_num_threads(threads)
    _warn_if_busy()
    if peak_gflops is None:
        logger.info(
            "measuring the %s matmul peak on %s%s", dtype, device,
            f" ({torch.get_num_threads()} threads)" if torch.device(device).type == "cpu" else "",
        )  # fmt: skip
        peak_gflops = measure_matmul_peak(peak_size, dtype=DTYPES[dtype], device=device)
    records = [
        bench_model(m, dtype=dtype, device=device, peak_gflops=peak_gflops, **kwargs)
        for m in models
    ]
    return add_ratios(records)
