"""Compiled chunk steps: one ``torch.compile``d function per chunk body, reused for every chunk.

The chunked test-time-learning ops (Titans, self-modifying Titans, the CMS levels) run a Python
loop over chunks. Compiling a whole model makes Dynamo unroll that loop (hope-tiny did not finish
compiling in 10 minutes). Instead, each op's per-chunk body is a pure tensor function with the
inner gradients written by hand (no double backward), and :func:`chunk_step` hands out a compiled
version of it: it is traced once per distinct set of shapes and flags and then replayed for every
chunk, every layer and every step, forward and backward (AOTAutograd compiles the backward too).

Switched on per process or per block of code::

    from nestlearn.ops import compiled
    compiled.enable()                # or: with compiled.chunk_compile(): ...
    loss = model(x).loss             # every aligned chunk runs the compiled step

``train.compile=true`` and ``nestlearn bench --compile`` do this for the memory families. On CUDA,
``mode="reduce-overhead"`` also captures each step as a CUDA graph (fixed shapes). Off (the
default), :func:`chunk_step` returns the eager function unchanged, so the numbers are the eager
op's; the compiled step agrees with it to float32 rounding (``tests/ops/test_compiled.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

__all__ = [
    "MODES",
    "chunk_compile",
    "chunk_step",
    "disable",
    "enable",
    "enabled_mode",
    "steady",
    "stepping",
]

F = TypeVar("F", bound=Callable[..., Any])

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes accepted by :func:`enable`."""

_mode: str | None = None
_cache: dict[tuple[Callable[..., Any], str], Callable[..., Any]] = {}
handed_out = 0
"""How many times :func:`chunk_step` returned a compiled function (tests, diagnostics)."""

RECOMPILE_LIMIT = 64
"""Dynamo's per-function recompile limit while compiled steps are on: one step function meets
several shapes (training and evaluation batches, projection and main memories, the flags of the
last chunk), each a separate graph; past the limit Dynamo would silently fall back to eager."""


def enable(mode: str = "default") -> None:
    """Compile chunk steps from now on (``mode``: one of :data:`MODES`)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"chunk-step compile mode must be one of {', '.join(MODES)}, got {mode!r}")
    cfg = torch._dynamo.config
    if getattr(cfg, "recompile_limit", RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
        cfg.recompile_limit = RECOMPILE_LIMIT
    _mode = mode


def disable() -> None:
    """Run chunk steps eagerly (the default)."""
    global _mode
    _mode = None


def enabled_mode() -> str | None:
    """The compile mode in force, or ``None`` when chunk steps run eagerly."""
    return _mode


@contextmanager
def chunk_compile(mode: str = "default") -> Iterator[None]:
    """Compile chunk steps inside the ``with`` block (restores the previous setting after)."""
    prev = _mode
    enable(mode)
    try:
        yield
    finally:
        globals()["_mode"] = prev


def chunk_step(fn: F) -> F:
    """``fn`` compiled (cached per function and mode) when compiled steps are on, else ``fn``.

    Under an outer ``torch.compile`` (the caller is being traced) ``fn`` is returned as is, so
    Dynamo inlines it rather than nesting a second compiled region.
    """
    if _mode is None or torch.compiler.is_compiling():
        return fn
    global handed_out
    handed_out += 1
    key = (fn, _mode)
    out = _cache.get(key)
    if out is None:
        out = torch.compile(fn, dynamic=False, mode=_mode)
        _cache[key] = out
    return out  # type: ignore[return-value]


def stepping() -> bool:
    """Whether :func:`chunk_step` hands out compiled steps here (on, and not inside a trace)."""
    return _mode is not None and not torch.compiler.is_compiling()


def steady(t: torch.Tensor, requires_grad: bool) -> torch.Tensor:
    """A first chunk's state ``t`` made to look like every later chunk's, so that one compiled
    graph serves them all (Dynamo guards on strides and ``requires_grad``; each mismatch was a
    separate graph, forward and backward, and Hope's cold compile paid for five of them).

    An expanded (stride-0) initial weight is materialised, and a zero momentum buffer that the
    later chunks' buffers differ from only in carrying a gradient becomes a leaf that requires
    one (its gradient is discarded). The values are unchanged. A no-op unless :func:`stepping`.
    """
    if not stepping():
        return t
    if 0 in t.stride():
        t = t.contiguous()
    if requires_grad and not t.requires_grad:
        t = t.detach().requires_grad_()
    return t

