"""Titans MAC, MAG and MAL (Behrouz et al., arXiv 2501.00663, §4): memory + attention hybrids.

Three families on the shared skeleton; each block is ``mixer + SwiGLU FFN`` (pre-norm residual),
the mixer being one of :mod:`nestlearn.layers.titans_hybrid`:

* ``titans-mac``, memory as a context: per segment, attention over
  ``[persistent || memory retrieval || segment]``; the memory learns from the attention output and
  gates it (eqs. 21-25).
* ``titans-mag``, memory as a gate: sliding-window attention (with persistent tokens) and the
  memory side by side, combined by a normalised sigmoid gate (eqs. 26-28).
* ``titans-mal``, memory as a layer: the memory, then sliding-window attention (eqs. 29-31).

The memory is :class:`nestlearn.memory.NeuralMemory` (the ``titans`` family's mixer, same options),
so everything said there holds: chunk-parallel inner updates, meta-learned ``M_0``, O(1) state.

Choices where the Titans paper is silent (also in ``docs/baselines.md``):

1. **Retrieval tokens (MAC).** ``h`` has one token per segment token (``N_l = C``). ``h_j`` is a
   function of token ``j``, so token ``i`` attends to ``h_0 .. h_i`` only (otherwise a later token
   would leak into earlier outputs); Fig. 3a's drawing does not settle this.
2. **Retrieval query (MAC).** ``q = l2norm(silu(W_r x))`` per memory head (§4.4's q/k treatment,
   no conv), and ``h`` is RMS-normalised (learned weight) before the attention projects it, since
   the memory's output scale differs from the normalised hidden states'.
3. **What MAC's memory learns from.** ``M_t = M_{t-1}(y_t)``: the memory's keys, values and
   queries all come from ``y`` (the attention heads' output), and eq. 25's ``M*_t(y_t)`` is the
   memory's per-token read, so the read at token ``i`` sees the segment's writes up to ``i`` only
   (causal; a read after the whole segment's update would leak later tokens).
4. **Outputs kept (MAC).** Only the segment tokens' attention outputs are used (not those at the
   persistent or retrieval positions).
5. **Positions.** RoPE with segment-local positions in MAC (``h_j`` and ``x_j`` both at ``j``),
   absolute positions in MAG/MAL's sliding window. Persistent tokens are position-free: scored
   against the unrotated query (``layers/persistent_attention.py``).
6. **The gate ⊗ (MAC eq. 25, MAG eq. 28).** ``W_o(rmsnorm(y) * sigmoid(rmsnorm(m)))``: the paper
   says "normalize ... using learnable vector-valued weights, followed by a non-linearity"; we
   read the non-linearity as a sigmoid gate from the memory branch, and let the attention's own
   output projection act once, after the gate (§4.4).
7. **Persistent tokens and the memory (MAG eq. 28, MAL eq. 29).** The memory reads ``x`` only,
   not ``[P || x]``: writing the same learned tokens first would just map the learned ``M_0`` to
   another learned initial state, which ``M_0`` already is. The attention gets ``P``.
8. **MAL's residuals.** ``m + W_o SWA(rmsnorm(x + m))``: a residual around each of the two layers
   (§4.4: "in all blocks, we use residual connections"), inside the block's mixer slot.
9. **Sizes.** ``n_persistent`` 16; segment and window 64 at the tiny size (sequence 256, so the
   memory must carry anything older than 64 tokens) and 512 at the paper shapes (training length
   4096); heads, memory depth and FFN widths as in the presets below. The paper prints none of
   these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nestlearn.layers.ffn import SwiGLU
from nestlearn.layers.persistent_attention import PersistentAttention
from nestlearn.layers.titans_hybrid import MACMixer, MAGMixer, MALMixer
from nestlearn.memory.neural_memory import NeuralMemory
from nestlearn.models.config import ModelConfig
from nestlearn.models.families._shared import config_attention, paper_shape, tiny_shape
from nestlearn.models.families.titans import TitansOptions, build_neural_memory
from nestlearn.models.registry import Family, register_family, register_preset
from nestlearn.models.skeleton import Block

_MAC_ONLY = {"segment_size"}
_SWA_ONLY = {"window"}


@dataclass
class TitansHybridOptions(TitansOptions):
    """``model.mixer`` options of ``titans-mac``, ``titans-mag`` and ``titans-mal``.

    The memory options are those of the ``titans`` family (:class:`TitansOptions`).
    """

    n_persistent: int = 16
    """Learned persistent-memory tokens prefixed to the attention's keys (0 disables them)."""
    segment_size: int = 64
    """``titans-mac`` only: tokens per segment (full causal attention inside a segment)."""
    window: int = 64
    """``titans-mag`` / ``titans-mal`` only: sliding-window attention span in tokens."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("segment_size", "window"):
            if getattr(self, key) < 1:
                raise ValueError(
                    f"model.mixer.{key} must be >= 1, got {getattr(self, key)}; try 64"
                )
        if self.n_persistent < 0:
            raise ValueError(f"model.mixer.n_persistent must be >= 0, got {self.n_persistent}")

    @classmethod
    def for_family(cls, opts: dict[str, Any], family: str) -> TitansHybridOptions:
        skip = _SWA_ONLY if family == "titans-mac" else _MAC_ONLY
        return cls.from_mapping(opts, family, tuple(skip))


def _memory(cfg: ModelConfig, o: TitansHybridOptions, layer: int) -> NeuralMemory:
    return build_neural_memory(cfg, o, layer)


def _attention(
    cfg: ModelConfig, o: TitansHybridOptions, layer: int, window: int | None
) -> PersistentAttention:
    return config_attention(
        cfg, PersistentAttention, n_persistent=o.n_persistent, window=window, init_seed=layer
    )


def build_mac_block(cfg: ModelConfig, layer: int) -> Block:
    o = TitansHybridOptions.for_family(cfg.mixer, "titans-mac")
    mixer = MACMixer(_attention(cfg, o, layer, None), _memory(cfg, o, layer), o.segment_size)
    return Block(cfg.dim, mixer, SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps)


def build_mag_block(cfg: ModelConfig, layer: int) -> Block:
    o = TitansHybridOptions.for_family(cfg.mixer, "titans-mag")
    mixer = MAGMixer(_attention(cfg, o, layer, o.window), _memory(cfg, o, layer))
    return Block(cfg.dim, mixer, SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps)


def build_mal_block(cfg: ModelConfig, layer: int) -> Block:
    o = TitansHybridOptions.for_family(cfg.mixer, "titans-mal")
    mixer = MALMixer(_attention(cfg, o, layer, o.window), _memory(cfg, o, layer))
    return Block(cfg.dim, mixer, SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps)


register_family(
    Family(
        "titans-mac",
        build_mac_block,
        "Titans MAC: segment attention over [persistent | memory retrieval | segment] + SwiGLU",
        supports_naive=True,
    )
)
register_family(
    Family(
        "titans-mag",
        build_mag_block,
        "Titans MAG: sliding-window attention gated by the neural memory + SwiGLU",
        supports_naive=True,
    )
)
register_family(
    Family(
        "titans-mal",
        build_mal_block,
        "Titans MAL: neural memory layer, then sliding-window attention + SwiGLU",
        supports_naive=True,
    )
)

# ------------------------------------------------------------------------------------ presets
# Tiny: matched to transformer-tiny (3,346,176 parameters at the byte vocabulary of 259) within
# 5% by the SwiGLU width; the mixers hold ~9-11 d^2 parameters against attention's 4 d^2.
# Paper shapes (Nested Learning Table 2: 760M/30B and 1.3B/100B, vocab 32K, training length 4K):
# the transformer presets' width and depth, FFN width matched to their parameter counts.
_TINY_FFN = {"titans-mac": 96, "titans-mag": 176, "titans-mal": 176}
_PAPER_FFN: dict[str, dict[str, int]] = {
    "titans-mac": {"760m": 864, "1.3b": 1216},
    "titans-mag": {"760m": 1376, "1.3b": 1888},
    "titans-mal": {"760m": 1376, "1.3b": 1888},
}
for _fam, _ffn in _TINY_FFN.items():
    _opt = {"segment_size": 64} if _fam == "titans-mac" else {"window": 64}
    register_preset(
        f"{_fam}-tiny",
        f"CPU size matched to transformer-tiny: d=256, 4 layers, 4 heads, seq 256, FFN {_ffn}, "
        + ("segment 64" if _fam == "titans-mac" else "window 64")
        + ", 16 persistent tokens, memory chunk 64",
        family=_fam,
        **tiny_shape(),
        ffn_hidden=_ffn,
        mixer=_opt,
    )
    for _size, _dim in (("760m", 1536), ("1.3b", 2048)):
        _big = {"segment_size": 512} if _fam == "titans-mac" else {"window": 512}
        register_preset(
            f"{_fam}-{_size}",
            f"Nested Learning Table 2 {_size.upper()} shape (d={_dim}, 24 layers), vocab 32K, "
            f"seq 4096, FFN {_PAPER_FFN[_fam][_size]} (matched to transformer-{_size}), "
            + ("segment 512" if _fam == "titans-mac" else "window 512"),
            family=_fam,
            **paper_shape(_dim),
            ffn_hidden=_PAPER_FFN[_fam][_size],
            mixer=_big,
        )
