"""What the family modules share: the preset shapes and the attention every family builds alike.

Private (``_``-prefixed, so ``families/__init__`` does not import it as a family).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from nestlearn.layers.attention import CausalSelfAttention
from nestlearn.models.config import ModelConfig

_Attn = TypeVar("_Attn", bound=CausalSelfAttention)
_Mod = TypeVar("_Mod", bound=torch.nn.Module)


def tiny_shape(*, n_layers: int = 4) -> dict[str, int]:
    """The CPU demo shape of the ``<family>-tiny`` presets: d=256, 4 heads, seq 256, the
    tokenizer's vocabulary (``vocab_size=0``); ``register_preset(..., **tiny_shape())``."""
    return {"vocab_size": 0, "dim": 256, "n_layers": n_layers, "n_heads": 4, "max_seq_len": 256}


def paper_shape(dim: int, *, n_layers: int = 24, n_heads: int = 16) -> dict[str, int]:
    """A paper-scale shape (Nested Learning Table 2, the Titans recipe): width ``dim``, the
    Llama-2 32K vocabulary, training length 4096."""
    return {
        "vocab_size": 32000,
        "dim": dim,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "max_seq_len": 4096,
    }


def config_attention(
    cfg: ModelConfig, cls: type[_Attn] = CausalSelfAttention, **options: Any
) -> _Attn:
    """``cls`` (causal attention or a subclass) with the heads, RoPE and qk-norm of ``cfg``;
    ``options`` are the class's own keywords (``window``, ``n_persistent``, ...)."""
    return cls(
        cfg.dim, cfg.n_heads, cfg.n_kv_heads, rope_base=cfg.rope_base,
        rope_interleaved=cfg.rope_interleaved, qk_norm=cfg.qk_norm, **options,
    )  # fmt: skip


def meta_module(build: Callable[..., _Mod], *args: Any, **kwargs: Any) -> _Mod:
    """``build(*args, **kwargs)`` on the meta device: a module to count the parameters of (a
    preset's matched FFN width) without allocating them."""
    with torch.device("meta"):
        return build(*args, **kwargs)
