"""Hope and Hope-Attention: the Nested Learning architectures (arXiv 2512.24695, §8.3).

* ``hope``: each block is self-modifying Titans (:class:`nestlearn.memory.SelfModifyingTitans`,
  eqs. 83-93) followed by a Continuum Memory System (:class:`nestlearn.memory.cms.ContinuumMemory`,
  eqs. 70-74), pre-norm residual (eqs. 94-97; the layout is our choice, docs/fidelity.md HOPE-1).
* ``hope-attention``: causal softmax attention followed by a CMS ("replace self-modifying Titans
  with softmax global attention", §8.3).

Options go in ``model.mixer`` (:class:`HopeOptions` / :class:`HopeAttentionOptions`); the CMS is
configured by ``model.mixer.cms`` (:class:`~nestlearn.memory.cms.CMSConfig`). Table 6's ablations
are switches: ``optimizer=gd`` (w/o DGD), ``momentum=false``, ``weight_decay=false``,
``cms.enabled=false`` (w/o CMS), ``adaptive_k=false`` / ``adaptive_v=false`` (fixed k / v),
``adaptive_q=true``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nestlearn.memory.cms import CMSConfig, ContinuumMemory
from nestlearn.memory.self_modifying import SelfModifyingOptions, SelfModifyingTitans
from nestlearn.models.config import ModelConfig
from nestlearn.models.families._shared import config_attention, paper_shape, tiny_shape
from nestlearn.models.registry import Family, register_family, register_preset
from nestlearn.models.skeleton import Block
from nestlearn.ops.recompute import DEFAULT_RECOMPUTE_GROUP, check_recompute_group
from nestlearn.utils.config import from_dict


def _check_cms(cms: dict[str, Any]) -> CMSConfig:
    return CMSConfig.from_dict(cms)  # validate now, naming unknown cms keys


@dataclass
class HopeOptions(SelfModifyingOptions):
    """``model.mixer`` options of the ``hope`` family: the mixer's own options
    (:class:`~nestlearn.memory.self_modifying.SelfModifyingOptions`, every field documented
    there) and the block's CMS."""

    cms: dict[str, Any] = field(default_factory=dict)
    """Continuum Memory System options (``CMSConfig``); ``cms.enabled=false`` = "w/o CMS"."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_cms(self.cms)

    @classmethod
    def from_mapping(cls, opts: dict[str, Any]) -> HopeOptions:
        return from_dict(cls, opts, "model.mixer.", what="model.mixer options", owner="hope")


@dataclass
class HopeAttentionOptions:
    """``model.mixer`` options of the ``hope-attention`` family (the attention is Transformer++'s:
    ``model.n_kv_heads``, ``model.rope_base`` ... apply)."""

    recompute_group: int | None = DEFAULT_RECOMPUTE_GROUP
    """Chunk-group recompute of the CMS levels in training (the attention has no chunk loop):
    one fast-weight snapshot per this many chunks is kept for backward. ``0`` keeps every
    chunk's tensors; ``cms.recompute_group``, when given, takes precedence."""
    cms: dict[str, Any] = field(default_factory=dict)
    """Continuum Memory System options (``CMSConfig``)."""

    def __post_init__(self) -> None:
        check_recompute_group(self.recompute_group, "model.mixer.recompute_group")
        _check_cms(self.cms)

    @classmethod
    def from_mapping(cls, opts: dict[str, Any]) -> HopeAttentionOptions:
        out = from_dict(
            cls, opts, "model.mixer.", what="model.mixer options", owner="hope-attention"
        )
        cms = CMSConfig.from_dict(out.cms)
        if out.recompute_group and "recompute_group" in opts and not (
            cms.enabled and cms.mode == "in_context"
        ):
            raise ValueError(
                f"model.mixer.recompute_group={out.recompute_group} acts on hope-attention's "
                f"in-context CMS levels, but cms.mode={cms.mode!r}, cms.enabled={cms.enabled} "
                "has none; drop it or set it to 0"
            )
        return out


def _cms(o: HopeOptions | HopeAttentionOptions, dim: int) -> ContinuumMemory:
    """The block's CMS; its recompute group defaults to the block's ``recompute_group``."""
    opts = dict(o.cms)
    cfg = CMSConfig.for_dim(opts, dim)
    if "recompute_group" not in opts and cfg.enabled and cfg.mode == "in_context":
        cfg.recompute_group = o.recompute_group or 0
    return ContinuumMemory(dim, cfg)


def build_hope_block(cfg: ModelConfig, layer: int) -> Block:
    o = HopeOptions.from_mapping(cfg.mixer)
    mixer = SelfModifyingTitans(cfg.dim, cfg.n_heads, o, init_seed=layer)
    return Block(cfg.dim, mixer, _cms(o, cfg.dim), cfg.norm_eps)


def build_hope_attention_block(cfg: ModelConfig, layer: int) -> Block:
    o = HopeAttentionOptions.from_mapping(cfg.mixer)
    return Block(cfg.dim, config_attention(cfg), _cms(o, cfg.dim), cfg.norm_eps)


register_family(
    Family(
        "hope",
        build_hope_block,
        "Hope: self-modifying Titans (DGD, self-generated values) + Continuum Memory System",
        supports_naive=True,
    )
)
register_family(
    Family(
        "hope-attention",
        build_hope_attention_block,
        "Hope-Attention: causal softmax attention + Continuum Memory System",
    )
)

# Tiny presets: matched to transformer-tiny (3,346,176 parameters at the byte vocabulary of 259)
# within 5% by the CMS width; the CMS keeps its default periods (16, 64, 128), which all update
# inside a 256-token training sequence.
register_preset(
    "hope-tiny",
    "CPU size matched to transformer-tiny: d=256, 4 layers, 4 heads, seq 256, chunks 32/64, "
    "CMS periods 16/64/128",
    family="hope",
    **tiny_shape(),
    mixer={"cms": {"hidden_mult": 0.625}},
)
register_preset(
    "hope-attention-tiny",
    "CPU size matched to transformer-tiny: d=256, 4 layers, 4 heads, seq 256, CMS periods "
    "16/64/128",
    family="hope-attention",
    **tiny_shape(),
)
# Paper shapes (Table 2: 760M/30B and 1.3B/100B; widths as our Transformer++ presets). The CMS
# periods for 4K-token training are not given in the paper (digest §9 item 4); these are ours:
# three levels, the slowest updating twice per training sequence.
_PAPER_CMS = {"periods": (16, 256, 2048)}
for _size, _dim in (("760m", 1536), ("1.3b", 2048)):
    for _fam, _what in (("hope", "Nested Learning"), ("hope-attention", "Hope-Attention at the")):
        register_preset(
            f"{_fam}-{_size}",
            f"{_what} Table 2 {_size.upper()} shape (d={_dim}, 24 layers), vocab 32K, seq 4096, "
            "CMS periods 16/256/2048",
            family=_fam,
            **paper_shape(_dim),
            mixer={"cms": dict(_PAPER_CMS)},
        )
