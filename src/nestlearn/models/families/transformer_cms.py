"""Transformer++ whose FFNs are Continuum Memory Systems: the Hope-Attention block shape.

Each block is ``Block(dim, CausalSelfAttention, ContinuumMemory)``: softmax attention (a memory
of frequency infinity) followed by a CMS (arXiv 2512.24695, section 7.1). Hope-Attention is the
paper's name for this shape (section 9.1). The family exists mainly for *ad-hoc level stacking*
(section 7.3): :func:`nestlearn.pretrained.stacking.stack_levels` turns a pretrained
``transformer`` checkpoint into this family, one pretrained MLP per CMS level, with a
per-layer choice of update period (``layer_periods``). The mapping and its reasons are in
``docs/fidelity.md``, section "Ad-hoc level stacking (§7.3)".

Options go in ``model.mixer`` (:class:`TransformerCMSOptions`)::

    model.family=transformer-cms
    model.mixer={cms: {periods: [16, 64, 128]}}                  # the same CMS in every block
    model.mixer={cms: {...}, layer_periods: [[16], [64], ...]}   # one period tuple per block
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from nestlearn.memory.cms import CMSConfig, ContinuumMemory
from nestlearn.models.config import ModelConfig
from nestlearn.models.families._shared import config_attention
from nestlearn.models.registry import Family, register_family
from nestlearn.models.skeleton import Block
from nestlearn.utils.config import check_keys


@dataclass
class TransformerCMSOptions:
    """``model.mixer`` options of the ``transformer-cms`` family."""

    cms: CMSConfig
    """The CMS of every block (``CMSConfig`` fields as a mapping)."""
    layer_periods: tuple[tuple[int, ...], ...] | None = None
    """Per-block periods overriding ``cms.periods`` (one strictly increasing tuple per block;
    all of the same length when ``cms.lr`` lists one rate per level). ``None`` = ``cms.periods``
    everywhere."""

    @classmethod
    def from_mapping(cls, opts: dict[str, Any], n_layers: int, dim: int) -> TransformerCMSOptions:
        check_keys(
            opts, [f.name for f in fields(cls)], what="model.mixer options",
            prefix="model.mixer.", owner="transformer-cms",
        )  # fmt: skip
        cms = CMSConfig.for_dim(opts.get("cms"), dim)
        lp = opts.get("layer_periods")
        if lp is not None:
            try:
                lp = tuple(tuple(int(p) for p in periods) for periods in lp)
            except TypeError:
                raise ValueError(
                    "model.mixer.layer_periods must be a list of period lists, one per block, "
                    f"e.g. [[16], [64]]; got {lp!r}"
                ) from None
            if len(lp) != n_layers:
                raise ValueError(
                    f"model.mixer.layer_periods has {len(lp)} entries for {n_layers} blocks; "
                    "give one period list per block"
                )
        return cls(cms, lp)

    def for_layer(self, layer: int) -> CMSConfig:
        """The CMS config of block ``layer`` (validated again with that block's periods)."""
        if self.layer_periods is None:
            return self.cms
        periods = self.layer_periods[layer]
        lr = self.cms.lr
        if len(set(lr)) == 1:
            lr = lr[0]
        elif len(lr) != len(periods):
            raise ValueError(
                f"block {layer} has {len(periods)} CMS levels but cms.lr lists {len(lr)} rates"
            )
        return replace(self.cms, periods=periods, lr=lr, outer_every=None)


def build_transformer_cms_block(cfg: ModelConfig, layer: int) -> Block:
    opts = TransformerCMSOptions.from_mapping(cfg.mixer, cfg.n_layers, cfg.dim)
    attn = config_attention(cfg)  # built first: the modules draw their init in this order
    return Block(cfg.dim, attn, ContinuumMemory(cfg.dim, opts.for_layer(layer)), cfg.norm_eps)


register_family(
    Family(
        "transformer-cms",
        build_transformer_cms_block,
        "attention + CMS FFN (Hope-Attention shape; target of ad-hoc level stacking)",
    )
)
