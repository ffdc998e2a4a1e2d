"""Mamba2 SSD (structured state space duality) ops.

``chunk_ssd`` is the fast path; ``naive_ssd`` is the per-token reference with the same signature.
The math and the chunked derivation are in ``README.md``.
"""

from nestlearn.ops.ssd.chunk import chunk_ssd
from nestlearn.ops.ssd.naive import naive_ssd

__all__ = ["chunk_ssd", "naive_ssd"]
