"""Continuum Memory System (CMS): a chain of MLP levels updated at different frequencies.

Nested Learning (arXiv 2512.24695) section 7.1, eqs. 70-74. Level ``l`` is an MLP whose weights
change every ``C^(l)`` tokens (``C^(1) < ... < C^(K)``); the outer optimizer learns every
level's initial state (eq. 73). :class:`ContinuumMemory` has the house FFN signature, so Hope's
block is ``Block(dim, self_modifying_titans, cms)`` and Hope-Attention's
``Block(dim, CausalSelfAttention, cms)``. Design decisions, with equation numbers, are in
``docs/fidelity.md``; usage in ``docs/cms.md``.

Modes (``CMSConfig.mode``):

* ``"in_context"`` (default): per-sequence fast weights ``[B, ...]`` updated inside the forward
  pass by eq. 71. With ``objective="next"`` each level learns from a local next-input regression
  (chunk-parallel, no backward through the network); with ``objective="ntp"`` the updates use
  the true next-token-prediction gradient, computed by the model-level driver :func:`ntp_forward`.
* ``"outer"``: levels are ordinary parameters that the outer optimizer updates every ``k_l``
  steps with accumulated gradients (:func:`attach_outer_schedule`).
* ``"static"``: a plain MLP chain (frequency 0).

Axis legend: B batch, T tokens, D width, V vocabulary.

Files, one concept each: ``config.py`` (:class:`CMSConfig`, the options), ``module.py``
(:class:`ContinuumMemory`, its levels and :class:`CMSState`), ``outer.py`` (the outer-mode
optimizer schedule), ``freeze.py`` (the CMS-only forms of the freeze API,
:mod:`nestlearn.memory.freeze`). The exact next-token driver is ``nestlearn.models.ntp``.
"""

from nestlearn.memory.cms.config import DEFAULT_RETENTION, CMSConfig
from nestlearn.memory.cms.freeze import frozen_cms, set_cms_frozen
from nestlearn.memory.cms.module import CMSLevel, CMSState, ContinuumMemory
from nestlearn.memory.cms.outer import apply_outer_schedule, attach_outer_schedule

__all__ = [
    "DEFAULT_RETENTION",
    "CMSConfig",
    "CMSLevel",
    "CMSState",
    "ContinuumMemory",
    "apply_outer_schedule",
    "attach_outer_schedule",
    "frozen_cms",
    "set_cms_frozen",
]
