"""Comba ops (arXiv 2506.02475): a gated delta rule with a separate erase key.

``chunk_comba`` is the fast form (WY / UT transform, exact at any chunk size);
``naive_recurrent_comba`` is the per-token reference with the same signature. Math in ``README.md``.
"""

from nestlearn.ops.comba.chunk import chunk_comba
from nestlearn.ops.comba.naive import naive_recurrent_comba

__all__ = ["chunk_comba", "naive_recurrent_comba"]
