"""Chunk-group recompute: run a loop over chunks in groups, keeping only each group's inputs.

The chunked test-time-learning ops (Titans, self-modifying Titans, the CMS levels) carry a
per-sequence state (fast weights, momentum, gradient sums) from chunk to chunk. Under autograd
every chunk saves its own copy of that state, and its activations, for backward, so training
memory grows with the number of chunks ``N``. With ``recompute_group = G`` the loop runs in
groups of ``G`` chunks, each under ``torch.utils.checkpoint`` (non-reentrant): the forward keeps
only each group's incoming state (one snapshot every ``G`` chunks) and the inputs the group reads,
and backward re-runs the group to rebuild what it needs, one group at a time. Memory then grows
with ``N / G`` snapshots plus one group's working set; the cost is one more forward of the loop.

The recomputed forward executes exactly the same operations on the same tensors, so outputs and
gradients are unchanged (the tests compare both to the non-recomputed path). Nothing is recomputed
when no gradient is being recorded (``torch.no_grad``, ``torch.inference_mode``) or no input
requires one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "DEFAULT_RECOMPUTE_GROUP",
    "check_recompute_group",
    "grad_flows",
    "group_views",
    "recompute_active",
    "run_grouped",
]

DEFAULT_RECOMPUTE_GROUP = 8
"""Chunks per recomputed group in the modules and configs (``docs/benchmarks.md``, "Training
memory": hope-tiny at 16x256 and a hope-760m block at 1x2048 measured at G = 4, 8, 16)."""

Carry = TypeVar("Carry")


def check_recompute_group(group: int | None, what: str = "recompute_group") -> int:
    """Validate ``group`` (``None`` or ``0`` = off, else a positive chunk count); returns an int."""
    if group is None:
        return 0
    if isinstance(group, bool) or not isinstance(group, int) or group < 0:
        raise ValueError(
            f"{what} must be a number of chunks >= 1 (or 0 / null for no recompute), got "
            f"{group!r}; try 8"
        )
    return group


def _tensors(obj: Any) -> Iterable[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)


def grad_flows(*inputs: Any) -> bool:
    """Whether a gradient is recorded through any of ``inputs``: grad mode on and some tensor
    needs grad. ``inputs`` may hold tensors, ``None`` and (nested) tuples / lists of them."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in _tensors(inputs))


def recompute_active(group: int | None, *inputs: Any) -> bool:
    """Whether grouped recompute applies: ``group > 0`` and :func:`grad_flows` through
    ``inputs`` (tensors, ``None`` and nested tuples / lists of them, e.g. states)."""
    return bool(group) and grad_flows(*inputs)


def run_grouped(
    n: int,
    group: int,
    step: Callable[[int, int, Carry], tuple[Any, Carry]],
    carry: Carry,
) -> tuple[list[Any], Carry]:
    """Run ``step`` over ``[0, n)`` in ranges of ``group`` items, each range checkpointed.

    Args:
        n: number of items (chunks) in the loop.
        group: items per checkpointed range ``G`` (``0``: one plain call over ``[0, n)``).
        step: ``step(start, stop, carry) -> (output, carry)`` runs items ``start..stop-1`` from
            ``carry`` (the loop state, any nest of tensors and Python values) and returns the
            range's output (any nest) and the carry after ``stop - 1``. It must be a pure
            function of its arguments and the tensors it closes over (the range is re-run in
            backward).
        carry: the state before item 0.

    Returns:
        ``(one output per range, in order; final carry)``.
    """
    if group <= 0 or n == 0:
        out, carry = step(0, n, carry)
        return [out], carry
    outs: list[Any] = []
    for start in range(0, n, group):
        # non-reentrant checkpoint: arbitrary (nested, non-tensor) arguments and outputs, and
        # the saved tensors of the range are dropped and rebuilt on first use in backward;
        # the ops draw no random numbers, so the RNG state need not be stashed
        o, carry = checkpoint(
            step, start, min(n, start + group), carry, use_reentrant=False,
            preserve_rng_state=False,
        )  # fmt: skip
        outs.append(o)
    return outs, carry


def group_views(x: Tensor, group: int) -> list[Tensor]:
    """``x [N, ...]`` cut on dim 0 into the ranges :func:`run_grouped` uses (``[x]`` if off).

    ``split`` views: their backward is one concatenation, where slicing each range out would
    allocate a zero-filled ``[N, ...]`` gradient per range.
    """
    return list(x.split(group)) if group > 0 else [x]
