"""Self-modifying Titans ops (Nested Learning eqs. 83-93): chunked fast path and naive reference.

``chunk_selfmod_titans`` is the fast path; ``naive_selfmod_titans`` the per-token reference with
the same signature. The math is in ``common.py``'s docstring; choices in ``docs/fidelity.md``.
"""

from nestlearn.ops.selfmod.chunk import chunk_selfmod_titans
from nestlearn.ops.selfmod.common import PROJECTIONS, SelfModState, project
from nestlearn.ops.selfmod.naive import naive_selfmod_titans

__all__ = [
    "PROJECTIONS",
    "SelfModState",
    "chunk_selfmod_titans",
    "naive_selfmod_titans",
    "project",
]
