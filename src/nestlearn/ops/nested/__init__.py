"""Nested memory ops: one memory level from a :class:`MemorySpec` (the four MIRAS axes).

``nested_memory`` runs a spec on the dedicated op that covers it (Titans, delta rule, TTT) or on the
generic chunked form ``chunk_nested``; ``naive_nested`` is the per-token reference derived from the
same spec. The math is in ``README.md``; the user-facing API is :mod:`nestlearn.nested`.
"""

from nestlearn.ops.nested.chunk import chunk_nested
from nestlearn.ops.nested.common import (
    NestedState,
    init_params,
    memory_forward,
    objective_loss,
    param_shapes,
    project,
    zeros_state,
)
from nestlearn.ops.nested.dispatch import BACKENDS, dedicated_op, nested_memory
from nestlearn.ops.nested.naive import naive_nested
from nestlearn.ops.nested.spec import MemorySpec

__all__ = [
    "BACKENDS",
    "dedicated_op",
    "nested_memory",
    "MemorySpec",
    "NestedState",
    "chunk_nested",
    "init_params",
    "memory_forward",
    "naive_nested",
    "objective_loss",
    "param_shapes",
    "project",
    "zeros_state",
]
