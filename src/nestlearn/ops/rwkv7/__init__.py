"""RWKV-7 ops: the diagonal-plus-low-rank (DPLR) delta rule.

``chunk_rwkv7`` is the fast form (exact at any chunk size); ``naive_recurrent_rwkv7`` is the per-token
reference loop with the same signature. The math and the chunked derivation are in ``README.md``.
"""

from nestlearn.ops.rwkv7.chunk import chunk_rwkv7
from nestlearn.ops.rwkv7.naive import naive_recurrent_rwkv7

__all__ = ["chunk_rwkv7", "naive_recurrent_rwkv7"]
