"""Delta-rule ops: DeltaNet and Gated DeltaNet fast-weight updates.

``chunk_*`` are the fast forms (WY representation, exact at any chunk size);
``naive_recurrent_*`` are the per-token reference loops with the same signatures. The math and the
chunked derivation are in ``README.md``.
"""

from nestlearn.ops.delta_rule.chunk import chunk_delta_rule, chunk_gated_delta_rule
from nestlearn.ops.delta_rule.naive import (
    naive_recurrent_delta_rule,
    naive_recurrent_gated_delta_rule,
)

__all__ = [
    "chunk_delta_rule",
    "chunk_gated_delta_rule",
    "naive_recurrent_delta_rule",
    "naive_recurrent_gated_delta_rule",
]
