"""Mamba2 and Samba on the shared skeleton (baselines of arXiv 2512.24695, Table 2).

* ``mamba2`` (Dao & Gu 2024): every block is a Mamba2 mixer. The Mamba2 recipe has **no MLP**
  (``Block(ffn=None)``), and matches a Transformer's parameter count by using about twice as
  many layers (Mamba2-780M: d=1536, 48 layers; Mamba2-1.3B: d=2048, 48 layers). That is the
  default here (``mixer.ffn="none"``); ``mixer.ffn="swiglu"`` adds a SwiGLU FFN to each block
  for Transformer-shaped comparisons at equal depth.
* ``samba`` (Ren et al. 2024, "Samba: Simple Hybrid State Space Models"): blocks alternate a
  recurrent layer and sliding-window attention, each followed by an MLP, i.e.
  ``Mamba -> MLP -> SWA -> MLP`` repeated (``mixer.pattern="MS"``: block ``i`` uses
  ``pattern[i % len(pattern)]``, ``M`` = Mamba2, ``S`` = SWA). Deviation, on purpose: Samba used
  Mamba-1 (per-channel selective scan); here the recurrent layer is the Mamba2/SSD mixer so both
  families share one verified op. Nested Learning's Table 2 lists "Samba*" without saying what
  the star changes.

Options (``model.mixer``) are validated by :class:`Mamba2Options`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nestlearn.layers.ffn import SwiGLU
from nestlearn.layers.mamba2 import Mamba2Mixer, Mamba2MixerOptions
from nestlearn.models.config import ModelConfig
from nestlearn.models.families._shared import config_attention, paper_shape, tiny_shape
from nestlearn.models.registry import Family, register_family, register_preset
from nestlearn.models.skeleton import Block
from nestlearn.utils.config import from_dict


@dataclass(kw_only=True)
class Mamba2Options(Mamba2MixerOptions):
    """``model.mixer`` options of the ``mamba2`` and ``samba`` families: the mixer's own
    (:class:`~nestlearn.layers.mamba2.Mamba2MixerOptions`, every field documented there) and
    these."""

    ffn: str = "none"
    """``"none"`` (Mamba2 recipe) or ``"swiglu"`` (a SwiGLU FFN after every mixer). Samba
    always has the FFN."""
    window: int = 2048
    """Samba only: sliding-window attention span in tokens (Samba paper: 2048)."""
    pattern: str = "MS"
    """Samba only: mixer of block i is ``pattern[i % len(pattern)]``; M = Mamba2, S = SWA."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ffn not in ("none", "swiglu"):
            raise ValueError(f"model.mixer.ffn must be 'none' or 'swiglu', got {self.ffn!r}")
        if self.window < 1:
            raise ValueError(f"model.mixer.window must be >= 1, got {self.window}; try 2048")
        if not self.pattern or set(self.pattern) - {"M", "S"}:
            raise ValueError(
                f"model.mixer.pattern must be a non-empty string of 'M' (Mamba2) and 'S' "
                f"(sliding-window attention), got {self.pattern!r}; Samba's is 'MS'"
            )

    @classmethod
    def from_config(cls, cfg: ModelConfig, family: str) -> Mamba2Options:
        return from_dict(cls, cfg.mixer, "model.mixer.", what="model.mixer options", owner=family)


def _mamba2(cfg: ModelConfig, opts: Mamba2Options, layer: int) -> Mamba2Mixer:
    return Mamba2Mixer(cfg.dim, opts, norm_eps=cfg.norm_eps, init_seed=layer)


def build_mamba2_block(cfg: ModelConfig, layer: int) -> Block:
    opts = Mamba2Options.from_config(cfg, "mamba2")
    ffn = SwiGLU(cfg.dim, cfg.ffn_width) if opts.ffn == "swiglu" else None
    return Block(cfg.dim, _mamba2(cfg, opts, layer), ffn, cfg.norm_eps)


def build_samba_block(cfg: ModelConfig, layer: int) -> Block:
    opts = Mamba2Options.from_config(cfg, "samba")
    if opts.pattern[layer % len(opts.pattern)] == "M":
        mixer: Any = _mamba2(cfg, opts, layer)
    else:
        mixer = config_attention(cfg, window=opts.window)
    return Block(cfg.dim, mixer, SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps)


register_family(
    Family(
        "mamba2",
        build_mamba2_block,
        "Mamba2 (SSD) blocks, no MLP (Mamba2 recipe)",
        supports_naive=True,
    )
)
register_family(
    Family(
        "samba",
        build_samba_block,
        "Samba: Mamba2 -> MLP -> sliding-window attention -> MLP",
        supports_naive=True,
    )
)

# ------------------------------------------------------------------------------------ presets
# Tiny presets are matched to transformer-tiny (3,346,176 parameters with the byte tokenizer,
# vocab 259) within 5%; docs/baselines_ssm.md tables the counts.
register_preset(
    "mamba2-tiny",
    "CPU demo size: d=256, 8 Mamba2 blocks (no MLP, N=32), seq 256; matched to transformer-tiny",
    family="mamba2",
    **tiny_shape(n_layers=8),
    mixer={"d_state": 32},
)
register_preset(
    "samba-tiny",
    "CPU demo size: d=256, 4 blocks (Mamba2/SWA alternating, window 128, FFN 576), seq 256",
    family="samba",
    **tiny_shape(),
    ffn_hidden=576,
    mixer={"d_state": 32, "window": 128},
)
# Paper shapes. Mamba2's own ladder (Dao & Gu 2024, Table of model sizes): 780M = d 1536 x 48
# layers, 1.3B = d 2048 x 48 layers, N = 128, head dim 64, expand 2. Nested Learning Table 2
# compares at 760M/30B and 1.3B/100B tokens, vocabulary 32K, training length 4K.
for _name, _dim in (("760m", 1536), ("1.3b", 2048)):
    register_preset(
        f"mamba2-{_name}",
        f"Mamba2 recipe at the Nested Learning Table 2 {_name.upper()} scale: d={_dim}, "
        "48 layers, N=128, vocab 32K, seq 4096",
        family="mamba2",
        **paper_shape(_dim, n_layers=48),
        mixer={"d_state": 128},
    )
    # Samba: Mamba/SWA pairs with SwiGLU MLPs and a 2048-token window (Ren et al. 2024). The
    # widths follow the transformer presets of the same scale (the exact Samba widths at these
    # sizes are not printed in the Nested Learning paper).
    register_preset(
        f"samba-{_name}",
        f"Samba at the Nested Learning Table 2 {_name.upper()} scale: d={_dim}, 24 layers "
        "(12 Mamba2 + 12 SWA, window 2048), vocab 32K, seq 4096",
        family="samba",
        **paper_shape(_dim),
        mixer={"d_state": 128, "window": 2048},
    )
