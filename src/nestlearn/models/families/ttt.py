"""TTT-Linear and TTT-MLP on the shared skeleton (baseline "TTT" of arXiv 2512.24695, Table 2).

Sun et al. 2024, "Learning to (Learn at Test Time)": each block is a TTT layer followed by a
SwiGLU MLP, i.e. the paper's Transformer-backbone variants "TTT-Linear (T)" / "TTT-MLP (T)"
(a Transformer++ with attention replaced by the TTT layer). Mini-batch TTT with ``b = 16`` and
``eta_base = 1`` (Linear) / ``0.1`` (MLP) as in the paper.

Options (``model.mixer``) are validated by :class:`TTTOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass

from nestlearn.layers.ffn import SwiGLU
from nestlearn.layers.ttt import TTTMixer, TTTMixerOptions
from nestlearn.models.config import ModelConfig
from nestlearn.models.families._shared import paper_shape, tiny_shape
from nestlearn.models.registry import Family, register_family, register_preset
from nestlearn.models.skeleton import Block
from nestlearn.utils.config import from_dict


@dataclass(kw_only=True)
class TTTOptions(TTTMixerOptions):
    """``model.mixer`` options of the ``ttt-linear`` and ``ttt-mlp`` families: the layer's own
    (:class:`~nestlearn.layers.ttt.TTTMixerOptions`, every field documented there)."""


def _builder(kind: str):
    def build(cfg: ModelConfig, layer: int) -> Block:
        o: TTTOptions = from_dict(
            TTTOptions, cfg.mixer, "model.mixer.", what="model.mixer options", owner=f"ttt-{kind}"
        )
        mixer = TTTMixer(
            cfg.dim, cfg.n_heads, o, inner=kind, rope_base=cfg.rope_base, init_seed=layer  # type: ignore[arg-type]
        )
        return Block(cfg.dim, mixer, SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps)

    return build


register_family(
    Family(
        "ttt-linear", _builder("linear"), "TTT-Linear (T): TTT layer + SwiGLU", supports_naive=True
    )
)
register_family(
    Family(
        "ttt-mlp",
        _builder("mlp"),
        "TTT-MLP (T): TTT layer (MLP inner) + SwiGLU",
        supports_naive=True,
    )
)

# ------------------------------------------------------------------------------------ presets
# Tiny presets are matched to transformer-tiny (3,346,176 parameters with the byte tokenizer)
# within 5%; TTT-MLP's inner MLP (2 x 4F^2 per head) is paid for with a narrower SwiGLU.
register_preset(
    "ttt-linear-tiny",
    "CPU demo size: d=256, 4 layers, 4 heads, mini-batch 16, seq 256",
    family="ttt-linear",
    **tiny_shape(),
)
register_preset(
    "ttt-mlp-tiny",
    "CPU demo size: d=256, 4 layers, 4 heads, mini-batch 16, FFN 512, seq 256",
    family="ttt-mlp",
    **tiny_shape(),
    ffn_hidden=512,
)
# Paper shapes: TTT follows the GPT-3/Mamba size ladder with head dim 64 (Sun et al. 2024,
# 760M: d=1536 x 24 layers, 1.3B: d=2048 x 24 layers); Nested Learning Table 2 compares at
# 760M/30B and 1.3B/100B tokens, vocabulary 32K, training length 4K.
for _kind in ("linear", "mlp"):
    for _name, _dim in (("760m", 1536), ("1.3b", 2048)):
        register_preset(
            f"ttt-{_kind}-{_name}",
            f"TTT-{_kind.upper() if _kind == 'mlp' else 'Linear'} (T) at the Nested Learning "
            f"Table 2 {_name.upper()} scale: d={_dim}, 24 layers, head dim 64, vocab 32K, seq 4096",
            family=f"ttt-{_kind}",
            **paper_shape(_dim, n_heads=_dim // 64),
        )
