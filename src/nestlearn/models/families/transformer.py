"""Transformer++ (Llama-style): RMSNorm, RoPE, SwiGLU, causal SDPA attention, optional GQA.

The reference every Nested Learning model is compared against (arXiv 2512.24695, Table 2).
In the paper's terms its attention is a memory of frequency infinity and its MLP a memory
of frequency zero (section 1.1 of the paper).
"""

from __future__ import annotations

from nestlearn.layers.ffn import SwiGLU
from nestlearn.models.config import ModelConfig
from nestlearn.models.families._shared import config_attention, paper_shape, tiny_shape
from nestlearn.models.registry import Family, register_family, register_preset
from nestlearn.models.skeleton import Block


def build_transformer_block(cfg: ModelConfig, layer: int) -> Block:
    if cfg.mixer:
        raise ValueError(
            f"the transformer family takes no model.mixer options, got {sorted(cfg.mixer)}"
        )
    return Block(cfg.dim, config_attention(cfg), SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps)


register_family(
    Family("transformer", build_transformer_block, "Transformer++ (Llama-style attention + SwiGLU)")
)

# The CPU demo model: about 3.5M parameters with the byte tokenizer.
register_preset(
    "transformer-tiny",
    "CPU demo size: d=256, 4 layers, 4 heads, seq 256",
    family="transformer",
    **tiny_shape(),
)
# Titans recipe shapes (Behrouz et al. 2025, Titans section 5.1: 170M/340M/400M/760M,
# Llama-2 32K tokenizer, training length 4K). The exact widths are not printed in the
# paper; these follow the usual GPT-3/Mamba size ladder at those parameter counts; then the
# Nested Learning Table 2 shapes (760M/30B and 1.3B/100B).
for _size, _dim, _layers, _heads, _where in (
    ("170m", 768, 12, 12, "Titans recipe 170M"),
    ("340m", 1024, 24, 16, "Titans recipe 340M"),
    ("760m", 1536, 24, 16, "Nested Learning Table 2 760M/30B"),
    ("1.3b", 2048, 24, 16, "Nested Learning Table 2 1.3B/100B"),
):
    register_preset(
        f"transformer-{_size}",
        f"{_where} shape (d={_dim}, {_layers} layers), vocab 32K, seq 4096",
        family="transformer",
        **paper_shape(_dim, n_layers=_layers, n_heads=_heads),
    )
