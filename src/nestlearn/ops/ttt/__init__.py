"""TTT-Linear / TTT-MLP ops: mini-batch test-time training of a per-head inner model.

``chunk_ttt`` is the fast path (dual form, loop over mini-batches); ``naive_ttt`` is the per-token
reference with the same signature. The math and the dual-form derivation are in ``README.md``.
"""

from nestlearn.ops.ttt.chunk import chunk_ttt
from nestlearn.ops.ttt.common import TTTState
from nestlearn.ops.ttt.naive import naive_ttt

__all__ = ["TTTState", "chunk_ttt", "naive_ttt"]
