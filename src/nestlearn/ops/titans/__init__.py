"""Titans neural-memory ops: chunk-parallel test-time training of a linear or residual-MLP memory.

``chunk_titans`` is the fast path; ``naive_chunk_titans`` / ``naive_recurrent_titans`` are the
reference loops with the same signature. The math and the chunked derivation are in ``README.md``.
"""

from nestlearn.ops.titans.chunk import chunk_titans
from nestlearn.ops.titans.common import TitansState, memory_forward, zeros_state
from nestlearn.ops.titans.naive import naive_chunk_titans, naive_recurrent_titans

__all__ = [
    "TitansState",
    "chunk_titans",
    "memory_forward",
    "naive_chunk_titans",
    "naive_recurrent_titans",
    "zeros_state",
]
