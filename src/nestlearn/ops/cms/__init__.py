"""Continuum Memory System ops: one CMS level's chunk-parallel in-context update (NL eq. 71-72).

``chunk_cms_level`` is the fast path; ``naive_cms_level`` is the per-token reference with the
same signature. The math and the chunked derivation are in ``README.md``.
"""

from nestlearn.ops.cms.chunk import chunk_cms_level, fold_pending
from nestlearn.ops.cms.common import CMSLevelState, level_forward
from nestlearn.ops.cms.naive import naive_cms_level

__all__ = ["CMSLevelState", "chunk_cms_level", "fold_pending", "level_forward", "naive_cms_level"]
