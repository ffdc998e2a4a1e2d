"""RWKV-7 and Comba baselines: DPLR / SPLR delta-rule mixers + SwiGLU on the shared skeleton.

Both are rows of Nested Learning's Table 2 (arXiv 2512.24695; 760M/30B and 1.3B/100B), of its
RULER NIAH table (Table 1) and of the recall / MAD tables (Tables 3-4). Options go in
``model.mixer`` (:class:`RWKV7Options`, and :class:`CombaOptions` for Comba).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nestlearn.layers.comba import CombaMixer, CombaMixerOptions
from nestlearn.layers.ffn import SwiGLU
from nestlearn.layers.rwkv7 import RWKV7Mixer, RWKV7MixerOptions
from nestlearn.models.config import ModelConfig
from nestlearn.models.families._shared import tiny_shape
from nestlearn.models.families.deltanet import mixer_options
from nestlearn.models.registry import Family, register_family, register_preset
from nestlearn.models.skeleton import Block

# the parameter target these presets were sized to: hope-tiny (vocab 259) before its
# per-memory convs (3,343,164 since), 0.4% apart, well inside the 5% the issue asks for
HOPE_TINY = 3_330_876
"""``hope-tiny`` at the byte vocabulary (259): the tiny presets here are within 5% of it."""


@dataclass
class RWKV7Options(RWKV7MixerOptions):
    """``model.mixer`` options of the ``rwkv7`` family: the layer's own
    (:class:`~nestlearn.layers.rwkv7.RWKV7MixerOptions`, every field documented there)."""


@dataclass
class CombaOptions(CombaMixerOptions):
    """``model.mixer`` options of the ``comba`` family: the layer's own
    (:class:`~nestlearn.layers.comba.CombaMixerOptions`: Gated DeltaNet's, plus the correction)."""


def build_rwkv7_block(cfg: ModelConfig, layer: int) -> Block:
    o: RWKV7Options = mixer_options(RWKV7Options, cfg)
    mixer = RWKV7Mixer(cfg.dim, cfg.n_heads, o, layer=layer, n_layers=cfg.n_layers)
    return Block(cfg.dim, mixer, SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps)


def _comba_mixer(cfg: ModelConfig) -> CombaMixer:
    o: CombaOptions = mixer_options(CombaOptions, cfg)
    return CombaMixer(cfg.dim, cfg.n_heads, o, norm_eps=cfg.norm_eps)


def build_comba_block(cfg: ModelConfig, layer: int) -> Block:
    return Block(cfg.dim, _comba_mixer(cfg), SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps)


register_family(
    Family(
        "rwkv7",
        build_rwkv7_block,
        "RWKV-7 (DPLR delta rule: per-channel decay + in-context rate, token shift) + SwiGLU",
        supports_naive=True,
    )
)
register_family(
    Family(
        "comba",
        build_comba_block,
        "Comba (gated delta rule with erase key p = d k and output correction) + SwiGLU",
        supports_naive=True,
    )
)


def _tiny_ffn(build, family: str, multiple: int = 8) -> int:  # noqa: ANN001
    """SwiGLU width putting the tiny preset (d=256, 4 layers, byte vocab) at hope-tiny's size."""
    dim, layers, vocab = 256, 4, 259
    with torch.device("meta"):
        mixer = build(ModelConfig(family=family, dim=dim, n_heads=4, n_layers=layers), 0).mixer
    have = sum(p.numel() for p in mixer.parameters())
    rest = 2 * vocab * dim + dim + layers * 2 * dim
    return max(
        multiple, round(((HOPE_TINY - rest) / layers - have) / (3 * dim) / multiple) * multiple
    )


for _name, _build, _what in (("rwkv7", build_rwkv7_block, "RWKV-7"),
                             ("comba", build_comba_block, "Comba")):  # fmt: skip
    register_preset(
        f"{_name}-tiny",
        f"{_what} at CPU size matched to hope-tiny: d=256, 4 layers, 4 heads, seq 256",
        family=_name,
        **tiny_shape(),
        ffn_hidden=_tiny_ffn(_build, _name),
    )
