"""Retention ops (RetNet): fixed per-head exponential decay over a linear-attention state.

``chunk_retention`` is the fast form (exact at any chunk size); ``naive_recurrent_retention``
(per-token loop) and ``naive_parallel_retention`` (RetNet's O(T^2) parallel form) are references
with the same signature. Math and derivation: ``README.md``.
"""

from nestlearn.ops.retention.chunk import chunk_retention
from nestlearn.ops.retention.naive import naive_parallel_retention, naive_recurrent_retention

__all__ = ["chunk_retention", "naive_parallel_retention", "naive_recurrent_retention"]
