"""Hope and Hope-Attention: the Nested Learning architectures (arXiv 2512.24695, §8.3).

* ``hope``: each block is self-modifying Titans (:class:`nestlearn.memory.SelfModifyingTitans`,
  eqs. 83-93) followed by a Continuum Memory System (:class:`nestlearn.memory.cms.ContinuumMemory`,
  eqs. 70-74), pre-norm residual (eqs. 94-97; the layout is our choice, docs/fidelity.md HOPE-1).
* ``hope-attention``: causal softmax attention followed by a CMS ("replace self-modifying Titans
  with softmax global attention", §8.3).

Options go in ``model.mixer`` (:class:`HopeOptions` / :class:`HopeAttentionOptions`); the CMS is
configured by ``model.mixer.cms`` (:class:`~nestlearn.memory.cms.CMSConfig`). Table 6's ablations
are switches: ``optimizer=gd`` (w/o DGD), ``momentum=false``, ``weight_decay=false``,
``cms.enabled=false`` (w/o CMS), ``adaptive_k=false`` / ``adaptive_v=false`` (fixed k / v),
``adaptive_q=true``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from nestlearn.layers.attention import CausalSelfAttention
from nestlearn.memory.cms import CMSConfig, ContinuumMemory
from nestlearn.memory.self_modifying import SelfModifyingTitans
from nestlearn.models.config import ModelConfig
from nestlearn.models.registry import Family, register_family, register_preset
from nestlearn.models.skeleton import Block
from nestlearn.ops.recompute import DEFAULT_RECOMPUTE_GROUP, check_recompute_group


@dataclass(frozen=True)
class HopeFamily(Family):
    supports_naive: bool = True
    """The mixer can run the per-token reference op (``nestlearn bench --naive``)."""


def _from_mapping(cls: type, family: str, opts: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    bad = sorted(set(opts) - known)
    if bad:
        raise ValueError(
            f"unknown model.mixer options {bad} for {family}; known: {', '.join(sorted(known))}"
        )
    out = cls(**opts)
    check_recompute_group(out.recompute_group, "model.mixer.recompute_group")
    CMSConfig.from_dict(out.cms)  # validate now, naming unknown cms keys
    return out


@dataclass
class HopeOptions:
    """``model.mixer`` options of the ``hope`` family."""

    expansion: float = 1.0
    """Hidden width of every memory MLP as a multiple of the head dim."""
    activation: str = "silu"
    """Memory activation: silu, gelu or relu."""
    optimizer: str = "dgd"
    """Inner optimizer: ``dgd`` (Delta GD with weight decay, eq. 88) or ``gd`` (w/o DGD)."""
    momentum: bool = True
    """Inner momentum (False = Table 6 "w/o momentum")."""
    weight_decay: bool = True
    """Retention gate alpha (False = Table 6 "w/o weight decay")."""
    adaptive_k: bool = True
    """Keys from a self-modifying memory (False = "w/o inner-projection k": fixed W_k)."""
    adaptive_v: bool = True
    """Values from a self-modifying memory (False = "w/o inner-projection v")."""
    adaptive_q: bool = False
    """Queries from a self-modifying memory (§8.1 keeps q fixed; Table 6 ablates it)."""
    chunk_size: int = 32
    """Chunk of the main memory M_memory (gradients at the previous chunk's final state)."""
    proj_chunk_size: int = 64
    """Chunk of the projection memories M_k, M_v, M_eta, M_alpha (and M_q)."""
    max_lr: float = 0.5
    """Upper bound of the inner learning rate eta_t = max_lr * sigmoid(.) (max_lr / 2 at init).
    With ``exact_output`` a write removes up to ``2 eta`` of its key's error; with both
    ``exact_output`` and ``hidden_chunk`` off use about 0.002 (docs/fidelity.md HOPE-4)."""
    momentum_max: float = 0.5
    """Upper bound of the inner momentum gate (docs/fidelity.md HOPE-4)."""
    conv_size: int = 4
    """Width of the causal depthwise conv on the memory input (§8.3: 4; 0 disables)."""
    exact_output: bool = True
    """Every memory's output layer follows the exact per-token recurrence inside its chunk (a
    normalised delta rule over the hidden features): strong writes that stay stable
    (docs/fidelity.md HOPE-4, TITANS-1)."""
    hidden_chunk: bool = True
    """Every memory's hidden layer is read at its chunk start and updated once per chunk (mean
    gradient), each row kept at its norm."""
    lr_init: float | None = None
    """Inner learning rate at init (``None`` = ``max_lr / 2``); the gate learns from there."""
    proj_lr_scale: float = 0.1
    """The projection memories (k, v, eta, alpha) learn at this fraction of the main memory's
    inner rate (0 = they never change in context). At 1.0 their strong writes made k, v, eta
    and alpha shift every chunk and cost 0.12 in validation loss (docs/fidelity.md HOPE-4)."""
    retain_to_init: bool = True
    """Every memory's hidden layer retains toward its meta-learned initial weights instead of
    toward zero (needs ``hidden_chunk``), so a long stream cannot drift it (docs/fidelity.md
    TITANS-2)."""
    per_memory_conv: bool = True
    """Each projection memory reads the memory input through its own causal conv, so M_k and
    M_v see different inputs (e.g. the previous and the current token); False shares one conv,
    which leaves k and v nearly equal at init and MQAR at 30% (docs/fidelity.md HOPE-11)."""
    naive: bool = False
    """Run the per-token reference op (tests and ``bench --naive`` only)."""
    recompute_group: int | None = DEFAULT_RECOMPUTE_GROUP
    """Chunk-group recompute in training: the self-modifying memories and the CMS levels keep
    one state snapshot per this many chunks for backward, which re-runs each group (same
    numbers, less memory, about one more forward of the loops; docs/benchmarks.md "Training
    memory"). ``0`` keeps every chunk's tensors. ``cms.recompute_group``, when given, sets the
    CMS's own. The naive reference op keeps everything."""
    cms: dict[str, Any] = field(default_factory=dict)
    """Continuum Memory System options (``CMSConfig``); ``cms.enabled=false`` = "w/o CMS"."""

    @classmethod
    def from_mapping(cls, opts: dict[str, Any]) -> HopeOptions:
        out = _from_mapping(cls, "hope", opts)
        if out.optimizer not in ("gd", "dgd"):
            raise ValueError(f"model.mixer.optimizer must be gd or dgd, got {out.optimizer!r}")
        if out.retain_to_init and not out.hidden_chunk:
            raise ValueError(
                "model.mixer.retain_to_init acts on chunk-level hidden layers; with "
                "hidden_chunk=false also set retain_to_init=false"
            )
        return out


@dataclass
class HopeAttentionOptions:
    """``model.mixer`` options of the ``hope-attention`` family (the attention is Transformer++'s:
    ``model.n_kv_heads``, ``model.rope_base`` ... apply)."""

    recompute_group: int | None = DEFAULT_RECOMPUTE_GROUP
    """Chunk-group recompute of the CMS levels in training (the attention has no chunk loop):
    one fast-weight snapshot per this many chunks is kept for backward. ``0`` keeps every
    chunk's tensors; ``cms.recompute_group``, when given, takes precedence."""
    cms: dict[str, Any] = field(default_factory=dict)
    """Continuum Memory System options (``CMSConfig``)."""

    @classmethod
    def from_mapping(cls, opts: dict[str, Any]) -> HopeAttentionOptions:
        out = _from_mapping(cls, "hope-attention", opts)
        cms = CMSConfig.from_dict(out.cms)
        if out.recompute_group and "recompute_group" in opts and not (
            cms.enabled and cms.mode == "in_context"
        ):
            raise ValueError(
                f"model.mixer.recompute_group={out.recompute_group} acts on hope-attention's "
                f"in-context CMS levels, but cms.mode={cms.mode!r}, cms.enabled={cms.enabled} "
                "has none; drop it or set it to 0"
            )
        return out


def _cms(o: HopeOptions | HopeAttentionOptions, dim: int) -> ContinuumMemory:
    """The block's CMS; its recompute group defaults to the block's ``recompute_group``."""
    opts = dict(o.cms)
    cfg = CMSConfig.for_dim(opts, dim)
    if "recompute_group" not in opts and cfg.enabled and cfg.mode == "in_context":
        cfg.recompute_group = o.recompute_group or 0
    return ContinuumMemory(dim, cfg)


def build_hope_block(cfg: ModelConfig, layer: int) -> Block:
    o = HopeOptions.from_mapping(cfg.mixer)
    mixer = SelfModifyingTitans(
        cfg.dim,
        cfg.n_heads,
        expansion=o.expansion,
        activation=o.activation,  # type: ignore[arg-type]
        optimizer=o.optimizer,  # type: ignore[arg-type]
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        adaptive_k=o.adaptive_k,
        adaptive_v=o.adaptive_v,
        adaptive_q=o.adaptive_q,
        chunk_size=o.chunk_size,
        proj_chunk_size=o.proj_chunk_size,
        max_lr=o.max_lr,
        momentum_max=o.momentum_max,
        conv_size=o.conv_size,
        exact_output=o.exact_output,
        hidden_chunk=o.hidden_chunk,
        per_memory_conv=o.per_memory_conv,
        retain_to_init=o.retain_to_init,
        lr_init=o.lr_init,
        proj_lr_scale=o.proj_lr_scale,
        naive=o.naive,
        recompute_group=o.recompute_group,
        init_seed=layer,
    )
    return Block(cfg.dim, mixer, _cms(o, cfg.dim), cfg.norm_eps)


def build_hope_attention_block(cfg: ModelConfig, layer: int) -> Block:
    o = HopeAttentionOptions.from_mapping(cfg.mixer)
    attn = CausalSelfAttention(
        cfg.dim,
        cfg.n_heads,
        cfg.n_kv_heads,
        rope_base=cfg.rope_base,
        rope_interleaved=cfg.rope_interleaved,
        qk_norm=cfg.qk_norm,
    )
    return Block(cfg.dim, attn, _cms(o, cfg.dim), cfg.norm_eps)


register_family(
    HopeFamily(
        "hope",
        build_hope_block,
        "Hope: self-modifying Titans (DGD, self-generated values) + Continuum Memory System",
    )
)
register_family(
    Family(
        "hope-attention",
        build_hope_attention_block,
        "Hope-Attention: causal softmax attention + Continuum Memory System",
    )
)

# Tiny presets: matched to transformer-tiny (3,346,176 parameters at the byte vocabulary of 259)
# within 5% by the CMS width; the CMS keeps its default periods (16, 64, 128), which all update
# inside a 256-token training sequence.
register_preset(
    "hope-tiny",
    "CPU size matched to transformer-tiny: d=256, 4 layers, 4 heads, seq 256, chunks 32/64, "
    "CMS periods 16/64/128",
    family="hope",
    vocab_size=0,
    dim=256,
    n_layers=4,
    n_heads=4,
    max_seq_len=256,
    mixer={"cms": {"hidden_mult": 0.625}},
)
register_preset(
    "hope-attention-tiny",
    "CPU size matched to transformer-tiny: d=256, 4 layers, 4 heads, seq 256, CMS periods "
    "16/64/128",
    family="hope-attention",
    vocab_size=0,
    dim=256,
    n_layers=4,
    n_heads=4,
    max_seq_len=256,
)
# Paper shapes (Table 2: 760M/30B and 1.3B/100B; widths as our Transformer++ presets). The CMS
# periods for 4K-token training are not given in the paper (digest §9 item 4); these are ours:
# three levels, the slowest updating twice per training sequence.
_PAPER_CMS = {"periods": (16, 256, 2048)}
for _size, _dim in (("760m", 1536), ("1.3b", 2048)):
    register_preset(
        f"hope-{_size}",
        f"Nested Learning Table 2 {_size.upper()} shape (d={_dim}, 24 layers), vocab 32K, seq "
        "4096, CMS periods 16/256/2048",
        family="hope",
        vocab_size=32000,
        dim=_dim,
        n_layers=24,
        n_heads=16,
        max_seq_len=4096,
        mixer={"cms": dict(_PAPER_CMS)},
    )
    register_preset(
        f"hope-attention-{_size}",
        f"Hope-Attention at the Table 2 {_size.upper()} shape (d={_dim}, 24 layers), vocab 32K, "
        "seq 4096, CMS periods 16/256/2048",
        family="hope-attention",
        vocab_size=32000,
        dim=_dim,
        n_layers=24,
        n_heads=16,
        max_seq_len=4096,
        mixer={"cms": dict(_PAPER_CMS)},
    )
