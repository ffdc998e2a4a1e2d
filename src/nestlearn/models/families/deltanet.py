"""DeltaNet and Gated DeltaNet baselines: delta-rule mixer + SwiGLU FFN on the shared skeleton.

DeltaNet is a baseline of Nested Learning's Table 2 (arXiv 2512.24695; 760M/30B and 1.3B/100B
rows) and of the Titans NIAH tables; Gated DeltaNet is the stronger variant the NeurIPS text says
Hope beats. Model options go in ``model.mixer`` (:class:`DeltaNetOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nestlearn.layers.deltanet import DeltaNetMixer, DeltaNetMixerOptions
from nestlearn.layers.ffn import SwiGLU
from nestlearn.models.config import ModelConfig
from nestlearn.models.families._shared import meta_module, paper_shape, tiny_shape
from nestlearn.models.registry import Family, register_family, register_preset
from nestlearn.models.skeleton import Block
from nestlearn.utils.config import from_dict

TINY_TARGET = 3_346_176
"""Parameters of ``transformer-tiny`` with the byte tokenizer (vocab 259): every ``*-tiny`` preset
is matched to it (and to ``hope-tiny``) within 5%."""


@dataclass
class DeltaNetOptions(DeltaNetMixerOptions):
    """``model.mixer`` options of the ``deltanet`` and ``gated-deltanet`` families: the layer's
    own (:class:`~nestlearn.layers.deltanet.DeltaNetMixerOptions`, every field documented
    there)."""


def mixer_options(cls: type, cfg: ModelConfig) -> Any:
    """Validate ``cfg.mixer`` into the options dataclass ``cls`` (unknown keys fail)."""
    return from_dict(cls, cfg.mixer, "model.mixer.", what="model.mixer keys", owner=cfg.family)


def _mixer(cfg: ModelConfig, gated: bool) -> DeltaNetMixer:
    opt: DeltaNetOptions = mixer_options(DeltaNetOptions, cfg)
    return DeltaNetMixer(cfg.dim, cfg.n_heads, opt, gated=gated, norm_eps=cfg.norm_eps)


def build_deltanet_block(cfg: ModelConfig, layer: int) -> Block:
    return Block(cfg.dim, _mixer(cfg, False), SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps)


def build_gated_deltanet_block(cfg: ModelConfig, layer: int) -> Block:
    return Block(cfg.dim, _mixer(cfg, True), SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps)


register_family(
    Family(
        "deltanet",
        build_deltanet_block,
        "DeltaNet (delta-rule linear attention, short conv, output gate) + SwiGLU",
        supports_naive=True,
    )
)
register_family(
    Family(
        "gated-deltanet",
        build_gated_deltanet_block,
        "Gated DeltaNet (delta rule with per-token decay) + SwiGLU",
        supports_naive=True,
    )
)


def matched_ffn_hidden(
    mixer: torch.nn.Module, dim: int, n_heads: int, multiple: int, ffn_hidden: int | None = None
) -> int:
    """SwiGLU width that makes ``mixer + SwiGLU`` hold as many parameters as a Transformer++
    block of the same width (``4 D^2`` attention + SwiGLU of ``ffn_hidden`` or the default 8/3 D),
    rounded to ``multiple``. ``mixer`` may live on the meta device."""
    default = ModelConfig(dim=dim, n_heads=n_heads, ffn_hidden=ffn_hidden).ffn_width
    target = 4 * dim * dim + 3 * dim * default
    have = sum(p.numel() for p in mixer.parameters())
    return max(multiple, round((target - have) / (3 * dim) / multiple) * multiple)


def _ffn(gated: bool, dim: int, n_heads: int, multiple: int, **mixer: Any) -> int:
    m = meta_module(DeltaNetMixer, dim, n_heads, gated=gated, **mixer)
    return matched_ffn_hidden(m, dim, n_heads, multiple)


for _name, _gated in (("deltanet", False), ("gated-deltanet", True)):
    register_preset(
        f"{_name}-tiny",
        "CPU demo size: d=256, 4 layers, 4 heads, seq 256; FFN width matched to transformer-tiny",
        family=_name,
        **tiny_shape(),
        ffn_hidden=_ffn(_gated, 256, 4, 8),
    )
# Table 2 shapes (760M/30B and 1.3B/100B; vocab 32K, training length 4K as in the Titans recipe).
# DeltaNet: head dim 128 as in Yang et al. 2024's 1.3B model. FFN width matched to the
# transformer preset of the same shape, so every family holds the same parameter count.
for _size, _dim, _heads in (("760m", 1536, 12), ("1.3b", 2048, 16)):
    register_preset(
        f"deltanet-{_size}",
        f"Nested Learning Table 2 {_size.upper()} shape (d={_dim}, 24 layers), vocab 32K, seq 4096",
        family="deltanet",
        **paper_shape(_dim, n_heads=_heads),
        ffn_hidden=_ffn(False, _dim, _heads, 64),
    )
# Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024): keys 0.75 D and values 1.5 D (expand_v 2), as
# in its paper; head dim 192 rather than the paper's 256, because D / n_heads must be an integer
# here (2048 / 6 is not).
for _size, _dim, _heads in (("760m", 1536, 6), ("1.3b", 2048, 8)):
    _mx = {"head_dim": 192, "expand_v": 2.0}
    register_preset(
        f"gated-deltanet-{_size}",
        f"Gated DeltaNet at the Table 2 {_size.upper()} shape (d={_dim}, 24 layers, "
        "keys 0.75d / values 1.5d), vocab 32K, seq 4096",
        family="gated-deltanet",
        **paper_shape(_dim, n_heads=_heads),
        ffn_hidden=_ffn(True, _dim, _heads, 64, **_mx),
        mixer=dict(_mx),
    )
