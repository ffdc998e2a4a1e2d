"""Transformer++ (Llama-style): RMSNorm, RoPE, SwiGLU, causal SDPA attention, optional GQA.

The reference every Nested Learning model is compared against (arXiv 2512.24695, Table 2).
In the paper's terms its attention is a memory of frequency infinity and its MLP a memory
of frequency zero (section 1.1 of the paper).
"""

from __future__ import annotations

from nestlearn.layers.attention import CausalSelfAttention
from nestlearn.layers.ffn import SwiGLU
from nestlearn.models.config import ModelConfig
from nestlearn.models.registry import Family, register_family, register_preset
from nestlearn.models.skeleton import Block


def build_transformer_block(cfg: ModelConfig, layer: int) -> Block:
    if cfg.mixer:
        raise ValueError(
            f"the transformer family takes no model.mixer options, got {sorted(cfg.mixer)}"
        )
    attn = CausalSelfAttention(
        cfg.dim,
        cfg.n_heads,
        cfg.n_kv_heads,
        rope_base=cfg.rope_base,
        rope_interleaved=cfg.rope_interleaved,
        qk_norm=cfg.qk_norm,
    )
    return Block(cfg.dim, attn, SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps)


register_family(
    Family("transformer", build_transformer_block, "Transformer++ (Llama-style attention + SwiGLU)")
)

# The CPU demo model: about 3.5M parameters with the byte tokenizer.
register_preset(
    "transformer-tiny",
    "CPU demo size: d=256, 4 layers, 4 heads, seq 256",
    family="transformer",
    vocab_size=0,
    dim=256,
    n_layers=4,
    n_heads=4,
    max_seq_len=256,
)
# Titans recipe shapes (Behrouz et al. 2025, Titans section 5.1: 170M/340M/400M/760M,
# Llama-2 32K tokenizer, training length 4K). The exact widths are not printed in the
# paper; these follow the usual GPT-3/Mamba size ladder at those parameter counts.
register_preset(
    "transformer-170m",
    "Titans recipe 170M shape (d=768, 12 layers), vocab 32K, seq 4096",
    family="transformer",
    vocab_size=32000,
    dim=768,
    n_layers=12,
    n_heads=12,
    max_seq_len=4096,
)
register_preset(
    "transformer-340m",
    "Titans recipe 340M shape (d=1024, 24 layers), vocab 32K, seq 4096",
    family="transformer",
    vocab_size=32000,
    dim=1024,
    n_layers=24,
    n_heads=16,
    max_seq_len=4096,
)
register_preset(
    "transformer-760m",
    "Nested Learning Table 2 760M/30B shape (d=1536, 24 layers), vocab 32K, seq 4096",
    family="transformer",
    vocab_size=32000,
    dim=1536,
    n_layers=24,
    n_heads=16,
    max_seq_len=4096,
)
register_preset(
    "transformer-1.3b",
    "Nested Learning Table 2 1.3B/100B shape (d=2048, 24 layers), vocab 32K, seq 4096",
    family="transformer",
    vocab_size=32000,
    dim=2048,
    n_layers=24,
    n_heads=16,
    max_seq_len=4096,
)
