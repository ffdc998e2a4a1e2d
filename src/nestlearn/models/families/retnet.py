"""RetNet baseline: multi-scale retention + SwiGLU FFN on the shared skeleton.

RetNet (Sun et al. 2023) is a baseline of Nested Learning's Table 2 (arXiv 2512.24695; 760M/30B
and 1.3B/100B rows). The paper's block pairs MSR with a plain 2D-wide FFN; here, as for every
baseline at this scale, the FFN is SwiGLU, with its width chosen so the block holds as many
parameters as a Transformer++ block. Options go in ``model.mixer`` (:class:`RetNetOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass

from nestlearn.layers.ffn import SwiGLU
from nestlearn.layers.retnet import RetNetMixer, RetNetMixerOptions
from nestlearn.models.config import ModelConfig
from nestlearn.models.families._shared import meta_module, paper_shape, tiny_shape
from nestlearn.models.families.deltanet import matched_ffn_hidden, mixer_options
from nestlearn.models.registry import Family, register_family, register_preset
from nestlearn.models.skeleton import Block


@dataclass
class RetNetOptions(RetNetMixerOptions):
    """``model.mixer`` options of the ``retnet`` family: the layer's own
    (:class:`~nestlearn.layers.retnet.RetNetMixerOptions`, every field documented there)."""


def build_retnet_block(cfg: ModelConfig, layer: int) -> Block:
    opt: RetNetOptions = mixer_options(RetNetOptions, cfg)
    mixer = RetNetMixer(cfg.dim, cfg.n_heads, opt, rope_base=cfg.rope_base, norm_eps=cfg.norm_eps)
    return Block(cfg.dim, mixer, SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps)


register_family(
    Family(
        "retnet",
        build_retnet_block,
        "RetNet (multi-scale retention, fixed per-head decay, xPos rotation) + SwiGLU",
        supports_naive=True,
    )
)


def _ffn(dim: int, n_heads: int, multiple: int) -> int:
    return matched_ffn_hidden(meta_module(RetNetMixer, dim, n_heads), dim, n_heads, multiple)


register_preset(
    "retnet-tiny",
    "CPU demo size: d=256, 4 layers, 4 heads, values 2d, seq 256; FFN matched to transformer-tiny",
    family="retnet",
    **tiny_shape(),
    ffn_hidden=_ffn(256, 4, 8),
)
# Table 2 shapes; heads of key dim 256 as in RetNet's 1.3B model (d=2048, 8 heads).
for _size, _dim, _heads in (("760m", 1536, 6), ("1.3b", 2048, 8)):
    register_preset(
        f"retnet-{_size}",
        f"Nested Learning Table 2 {_size.upper()} shape (d={_dim}, 24 layers), vocab 32K, seq 4096",
        family="retnet",
        **paper_shape(_dim, n_heads=_heads),
        ffn_hidden=_ffn(_dim, _heads, 64),
    )
