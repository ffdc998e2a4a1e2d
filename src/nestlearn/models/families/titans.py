"""Titans (LMM): the neural long-term memory as the token mixer, plus a SwiGLU FFN per block.

Titans (Behrouz et al., arXiv 2501.00663) is Hope's backbone and the closest baseline of Nested
Learning's Table 2 ("Titans (LMM)", arXiv 2512.24695). The mixer is
:class:`nestlearn.memory.NeuralMemory`: a per-sequence MLP memory trained in the forward pass by
chunk-parallel gradient descent with momentum and forgetting (Titans eqs. 12-14), its initial
weights meta-learned by the outer optimizer. Options go in ``model.mixer``
(:class:`TitansOptions`); the MAC / MAG / MAL variants are the families in
``titans_variants.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from nestlearn.layers.ffn import SwiGLU
from nestlearn.memory.neural_memory import NeuralMemory
from nestlearn.models.config import ModelConfig
from nestlearn.models.registry import Family, register_family, register_preset
from nestlearn.models.skeleton import Block
from nestlearn.ops.recompute import DEFAULT_RECOMPUTE_GROUP, check_recompute_group


@dataclass(frozen=True)
class TitansFamily(Family):
    supports_naive: bool = True
    """The mixer can run the naive per-chunk reference (``nestlearn bench --naive``)."""


@dataclass
class TitansOptions:
    """``model.mixer`` options of the ``titans`` family."""

    memory: str = "mlp"
    """``mlp`` (residual MLP memory, Titans' deep memory) or ``linear`` (matrix memory)."""
    depth: int = 2
    """Layers of the MLP memory (>= 2)."""
    expansion: float = 2.0
    """Hidden width of the MLP memory as a multiple of the head dim."""
    activation: str = "silu"
    """Memory activation: silu, gelu or relu."""
    optimizer: str = "gd"
    """Inner optimizer: ``gd`` (Titans) or ``dgd`` (Delta Gradient Descent, NL eq. 57/88)."""
    momentum: bool = True
    """Surprise momentum (Titans eq. 13); False is the "w/o momentum" ablation."""
    forget: bool = True
    """Forgetting gate (Titans eq. 14); False is the "w/o weight decay" ablation."""
    chunk_size: int = 64
    """Tokens per chunk: the hidden layers' update period (and, with ``exact_output=false``, the
    span whose gradients are all taken at the chunk's starting weights)."""
    max_lr: float = 1.0
    """Upper bound of the inner learning rate theta = max_lr * sigmoid(.) (max_lr / 2 at init).
    With ``exact_output`` one write removes up to ``2 theta`` of its key's error; keep it <= 1.
    With both ``exact_output`` and ``hidden_chunk`` off use about ``1 / chunk_size`` (0.002 was
    that rule's default; docs/fidelity.md TITANS-1)."""
    momentum_max: float = 0.5
    """Upper bound of the momentum gate eta = momentum_max * sigmoid(.); 1.0 (uncapped) diverged
    at outer lr 3e-3 (see nestlearn.memory.neural_memory)."""
    conv_size: int = 4
    """Width of the causal depthwise conv after the q/k/v projection (0 disables it)."""
    exact_output: bool = True
    """Inside a chunk the memory's output layer follows the exact per-token recurrence (a delta
    rule over the hidden features, step normalised by their energy), so strong writes stay
    stable; False = every gradient at the chunk start (docs/fidelity.md TITANS-1)."""
    hidden_chunk: bool = True
    """Hidden layers of the MLP memory are read at the chunk start and updated once per chunk
    with the mean gradient, each row kept at its norm (a linear memory has no hidden layer)."""
    lr_init: float | None = None
    """Inner learning rate at init (``None`` = ``max_lr / 2``); the gate learns from there."""
    retain_to_init: bool = True
    """The hidden layers' retention pulls them toward the meta-learned initial weights M_0
    instead of toward zero (needs ``hidden_chunk``): a long stream cannot drift them away from
    what training saw (docs/fidelity.md TITANS-2)."""
    naive: bool = False
    """Run the naive per-chunk reference op (tests and ``bench --naive`` only)."""
    recompute_group: int | None = DEFAULT_RECOMPUTE_GROUP
    """Chunk-group recompute in training: one memory snapshot per this many chunks is kept for
    backward, which re-runs each group (same numbers, less memory, about one more forward of
    the memory; docs/benchmarks.md "Training memory"). ``0`` keeps every chunk's tensors. The
    naive reference op keeps everything."""

    @classmethod
    def from_mapping(cls, opts: dict[str, Any]) -> TitansOptions:
        known = {f.name for f in fields(cls)}
        bad = sorted(set(opts) - known)
        if bad:
            raise ValueError(
                f"unknown model.mixer options {bad} for titans; known: {sorted(known)}"
            )
        out = cls(**opts)
        check_recompute_group(out.recompute_group, "model.mixer.recompute_group")
        if out.memory not in ("mlp", "linear"):
            raise ValueError(f"model.mixer.memory must be mlp or linear, got {out.memory!r}")
        if out.optimizer not in ("gd", "dgd"):
            raise ValueError(f"model.mixer.optimizer must be gd or dgd, got {out.optimizer!r}")
        if out.retain_to_init and not out.hidden_chunk:
            raise ValueError(
                "model.mixer.retain_to_init acts on chunk-level hidden layers; with "
                "hidden_chunk=false also set retain_to_init=false"
            )
        return out


def build_neural_memory(cfg: ModelConfig, o: TitansOptions, layer: int) -> NeuralMemory:
    """The Titans memory mixer of block ``layer`` from the family options (shared by MAC/MAG/MAL)."""
    return NeuralMemory(
        cfg.dim,
        cfg.n_heads,
        memory=o.memory,  # type: ignore[arg-type]
        depth=o.depth,
        expansion=o.expansion,
        activation=o.activation,  # type: ignore[arg-type]
        optimizer=o.optimizer,  # type: ignore[arg-type]
        momentum=o.momentum,
        forget=o.forget,
        chunk_size=o.chunk_size,
        max_lr=o.max_lr,
        momentum_max=o.momentum_max,
        conv_size=o.conv_size,
        hidden_chunk=o.hidden_chunk,
        exact_output=o.exact_output,
        retain_to_init=o.retain_to_init,
        lr_init=o.lr_init,
        naive=o.naive,
        recompute_group=o.recompute_group,
        init_seed=layer,
    )


def build_titans_block(cfg: ModelConfig, layer: int) -> Block:
    mem = build_neural_memory(cfg, TitansOptions.from_mapping(cfg.mixer), layer)
    return Block(cfg.dim, mem, SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps)


register_family(
    TitansFamily(
        "titans",
        build_titans_block,
        "Titans (LMM): chunk-parallel neural memory mixer + SwiGLU",
    )
)

# FFN width chosen so the tiny preset matches transformer-tiny (3,346,176 parameters at the byte
# vocabulary of 259) within 5%: the memory mixer has ~5.5 d^2 parameters against attention's 4 d^2.
register_preset(
    "titans-tiny",
    "CPU size matched to transformer-tiny: d=256, 4 layers, 4 heads, seq 256, chunk 64",
    family="titans",
    vocab_size=0,
    dim=256,
    n_layers=4,
    n_heads=4,
    max_seq_len=256,
    ffn_hidden=512,
)
register_preset(
    "titans-760m",
    "Nested Learning Table 2 760M/30B shape (d=1536, 24 layers), vocab 32K, seq 4096",
    family="titans",
    vocab_size=32000,
    dim=1536,
    n_layers=24,
    n_heads=16,
    max_seq_len=4096,
)
register_preset(
    "titans-1.3b",
    "Nested Learning Table 2 1.3B/100B shape (d=2048, 24 layers), vocab 32K, seq 4096",
    family="titans",
    vocab_size=32000,
    dim=2048,
    n_layers=24,
    n_heads=16,
    max_seq_len=4096,
)
