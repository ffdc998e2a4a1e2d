"""Comba token mixer (Hu et al. 2025, arXiv 2506.02475): ``x: [B, T, D] -> [B, T, D]``.

Axis legend: B batch, T tokens, D model width, H heads, K key head dim, V value head dim.

Comba is the Gated DeltaNet layer (:class:`~nestlearn.layers.deltanet.DeltaNetMixer`: short conv,
l2-normalised q and k, ``beta = sigmoid(W_b x)``, Mamba2-style decay ``alpha``, output norm and gate)
with two changes, its "closed-loop control" (paper §3):

    p_t  = d_h k_t,  d_h = sigmoid(decay_h)        erase key: a scalar-plus-low-rank transition
    S_t  = alpha_t (I - beta_t k_t p_t^T) S_{t-1} + beta_t k_t v_t^T          (ops/comba)
    o_t  = S_t^T (q_t - D_h p_t)                   output correction

so the memory writes ``k -> v`` but corrects only a fraction ``d_h`` of what it recalls along ``k``.

Differences from flash-linear-attention's ``Comba`` layer: fla l2-normalises ``p`` inside its
kernel (``use_qk_l2norm_in_kernel``), which cancels ``d_h``; here ``p = d_h k_hat`` after the
normalisation, the paper's SPLR form. ``D_h`` starts at 0.02, the value fla reports working better
than 1 for small models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from nestlearn.layers.deltanet import RECURRENT_MAX_T, DeltaNetMixer, DeltaNetMixerOptions
from nestlearn.ops.comba import chunk_comba, naive_recurrent_comba
from nestlearn.ops.fla_dispatch import fla_or_none
from nestlearn.utils.config import options_or_keywords

__all__ = ["CombaMixer"]


@dataclass
class CombaMixerOptions(DeltaNetMixerOptions):
    """Options of :class:`CombaMixer`: DeltaNet's and the output correction's init (the
    ``comba`` family's ``model.mixer`` options)."""

    correction_init: float = 0.02
    """Output-correction factor ``D_h`` at init (``o = S^T (q - D p)``)."""


class CombaMixer(DeltaNetMixer):
    """Comba: gated delta rule with a separate erase key and an output correction.

    Args are :class:`DeltaNetMixer`'s (always gated), with :class:`CombaMixerOptions` (which
    adds ``correction_init``, ``D_h`` at init).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        options: CombaMixerOptions | None = None,
        *,
        norm_eps: float = 1e-6,
        init_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        options = options_or_keywords(CombaMixerOptions, options, kwargs)
        self.correction_init = options.correction_init
        super().__init__(dim, n_heads, options, gated=True, norm_eps=norm_eps, init_seed=init_seed)
        self.decay = nn.Parameter(torch.empty(n_heads))
        self.correction = nn.Parameter(torch.empty(n_heads))
        if self.decay.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Gated DeltaNet's decay init, ``decay_h = 1`` (``d_h = sigmoid(1) = 0.73``, fla's
        init) and ``D_h = correction_init``."""
        super().reset_parameters()
        if hasattr(self, "decay"):
            self.decay.fill_(1.0)
            self.correction.fill_(self.correction_init)

    def _delta(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Tensor,
        g: Tensor | None,
        S0: Tensor | None,
        act: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        assert g is not None
        d = torch.sigmoid(self.decay.to(q.dtype)).view(1, 1, -1, 1)
        p = d * k
        qc = q - self.correction.to(q.dtype).view(1, 1, -1, 1) * p
        out = fla_or_none("fla_comba", self.backend, self.naive, qc, k, v, p, g, beta, S0,
                          act_dtype=act)  # fmt: skip
        if out is not None:
            return out
        if self.naive or q.shape[1] <= RECURRENT_MAX_T:
            return naive_recurrent_comba(qc, k, v, p, g, beta, S0)
        return chunk_comba(qc, k, v, p, g, beta, S0, chunk_size=self.chunk_size)
