"""Read a Llama-architecture GGUF file into a Transformer++ config and float32 state dict.

GGUF (the llama.cpp format) stores each tensor under a llama.cpp name, possibly quantised
(Q4_1, Q8_0, ...), with the model's hyper-parameters and tokenizer as metadata. This module
dequantises every tensor to float32 with the ``gguf`` package (``pip install "nestlearn[pretrained]"``),
renames it to the :class:`~nestlearn.models.skeleton.LanguageModel` layout of the
``transformer`` family and builds the matching :class:`~nestlearn.models.config.ModelConfig`.

Axis legend: H heads of a projection (query heads for Q, key/value heads for K), Dh head dim,
D model width.

**Q/K layout.** llama.cpp's converter reorders the rows of every head of ``W_q`` and ``W_k``
so that RoPE rotates adjacent pairs ``(2i, 2i+1)`` (the original Meta layout) instead of the
Hugging Face pairs ``(i, i + Dh/2)``: inside each head, converted row ``2i`` is HF row ``i`` and
converted row ``2i + 1`` is HF row ``Dh/2 + i``. :func:`unpermute_qk` undoes that reordering, so
the loaded model uses our default half-split RoPE (``rope_interleaved=False``) and its weights
equal the Hugging Face checkpoint's. Both choices are the same function: a head's attention
scores depend on ``q`` and ``k`` only through ``q.k`` after a rotation applied to the same pairs
of both, and reordering the rows of ``W_q`` and ``W_k`` identically does not change ``q.k``
(tests check that the interleaved pairing on the stored rows gives the same logits).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nestlearn.models.config import ModelConfig

logger = logging.getLogger(__name__)

__all__ = [
    "GGUFModel",
    "gguf_state_to_model",
    "load_gguf_llama",
    "permute_qk",
    "read_gguf",
    "unpermute_qk",
]

_GLOBAL = {
    "token_embd.weight": "embed.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "head.weight",
}
_PER_BLOCK = {
    "attn_norm.weight": "mixer_norm.weight",
    "attn_q.weight": "mixer.wq.weight",
    "attn_k.weight": "mixer.wk.weight",
    "attn_v.weight": "mixer.wv.weight",
    "attn_output.weight": "mixer.wo.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "ffn.w_gate.weight",
    "ffn_up.weight": "ffn.w_up.weight",
    "ffn_down.weight": "ffn.w_down.weight",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise ImportError(
            "reading GGUF files needs the gguf package: pip install 'nestlearn[pretrained]' "
            "(or pip install gguf)"
        ) from None
    return gguf


@dataclass
class GGUFModel:
    """A GGUF file's contents in nestlearn terms.

    Attributes:
        config: the ``transformer`` family config that holds the weights.
        state: float32 tensors under :class:`LanguageModel` names (``head.weight`` absent when
            the embeddings are tied); Q/K rows in the Hugging Face (half-split RoPE) layout.
        metadata: every scalar and string metadata field (``general.*``, ``llama.*``, special
            token ids); the long tokenizer arrays are left out.
        fields: the raw reader fields (for :func:`~nestlearn.pretrained.tokenizer.tokenizer_from_gguf`).
        tensor_types: the stored (quantisation) type of each GGUF tensor, by GGUF name.
    """

    config: ModelConfig
    state: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    tensor_types: dict[str, str] = field(default_factory=dict)


def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF layout -> GGUF layout of a Q or K projection ``w: [H * Dh, D]`` (see module docstring).

    Within each head, output row ``2i`` takes HF row ``i`` and row ``2i + 1`` takes HF row
    ``Dh/2 + i``. Used by tests and by anyone writing a GGUF; :func:`unpermute_qk` inverts it.
    """
    rows, cols = w.shape
    dh = _head_dim(rows, n_heads)
    return w.reshape(n_heads, 2, dh // 2, cols).transpose(1, 2).reshape(rows, cols)


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """GGUF layout -> HF layout of a Q or K projection ``w: [H * Dh, D]``; inverse of :func:`permute_qk`."""
    rows, cols = w.shape
    dh = _head_dim(rows, n_heads)
    return w.reshape(n_heads, dh // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _head_dim(rows: int, n_heads: int) -> int:
    if n_heads <= 0 or rows % n_heads or (rows // n_heads) % 2:
        raise ValueError(
            f"a Q/K projection with {rows} rows cannot be split into {n_heads} heads of even size"
        )
    return rows // n_heads


def _field_value(f: Any) -> Any:
    try:
        v = f.contents()
    except Exception:  # very old gguf releases: fall back to the raw parts
        v = f.parts[f.data[0]] if f.data else None
    if isinstance(v, np.generic):
        v = v.item()
    return v


def read_gguf(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str]]:
    """``(fields, tensors, tensor_types)`` of a GGUF file, every tensor dequantised to float32.

    ``fields`` maps each metadata key to its Python value; ``tensors`` maps each GGUF tensor
    name to a float32 array in PyTorch order (``[out, in]`` for matrices).
    """
    gguf = _require_gguf()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
    reader = gguf.GGUFReader(str(path))
    fields = {k: _field_value(v) for k, v in reader.fields.items()}
    tensors: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    for t in reader.tensors:
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))  # GGUF lists dims innermost first
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = np.ascontiguousarray(arr, dtype=np.float32).reshape(shape)
        types[t.name] = t.tensor_type.name
    return fields, tensors, types


def _get(fields: dict[str, Any], key: str, default: Any = None, *, required: bool = False) -> Any:
    if key in fields:
        return fields[key]
    if required:
        raise ValueError(f"the GGUF file has no {key!r} field; is it a complete llama model?")
    return default


def gguf_state_to_model(
    fields: dict[str, Any], tensors: dict[str, np.ndarray]
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Map a llama GGUF's metadata and dequantised tensors to ``(ModelConfig, state dict)``.

    Raises ``ValueError`` naming the problem for another architecture, RoPE scaling, missing or
    unexpected tensors, or shapes that disagree with the metadata.
    """
    arch = _get(fields, "general.architecture", required=True)
    if arch != "llama":
        raise ValueError(
            f"general.architecture is {arch!r}; only 'llama' GGUF files (Llama, SmolLM, ...) "
            "map onto the transformer family"
        )
    n_layers = int(_get(fields, "llama.block_count", required=True))
    dim = int(_get(fields, "llama.embedding_length", required=True))
    n_heads = int(_get(fields, "llama.attention.head_count", required=True))
    n_kv = int(_get(fields, "llama.attention.head_count_kv", n_heads))
    ffn = int(_get(fields, "llama.feed_forward_length", required=True))
    eps = float(_get(fields, "llama.attention.layer_norm_rms_epsilon", 1e-5))
    base = float(_get(fields, "llama.rope.freq_base", 10000.0))
    ctx = int(_get(fields, "llama.context_length", 2048))
    rope_dim = _get(fields, "llama.rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != dim // n_heads:
        raise ValueError(
            f"llama.rope.dimension_count={rope_dim} rotates part of each head (head dim "
            f"{dim // n_heads}); partial RoPE is not supported by the transformer family"
        )
    scaling = _get(fields, "llama.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(f"RoPE scaling {scaling!r} is not supported (plain RoPE only)")
    eps = float(str(np.float32(eps)))  # stored as float32: 9.99999974e-06 -> 1e-05 (same float32)
    tied = "output.weight" not in tensors
    emb = tensors.get("token_embd.weight")
    if emb is None:
        raise ValueError("the GGUF file has no token_embd.weight tensor")
    vocab = int(_get(fields, "llama.vocab_size", emb.shape[0]))
    cfg = ModelConfig(
        family="transformer",
        vocab_size=vocab,
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv if n_kv != n_heads else None,
        ffn_hidden=ffn,
        max_seq_len=ctx,
        rope_base=base,
        rope_interleaved=False,
        norm_eps=eps,
        tie_embeddings=tied,
    )
    state: dict[str, torch.Tensor] = {}
    unknown = []
    for name, arr in tensors.items():
        m = _BLOCK_RE.match(name)
        if name in _GLOBAL:
            ours = _GLOBAL[name]
        elif m and m.group(2) in _PER_BLOCK and int(m.group(1)) < n_layers:
            ours = f"blocks.{m.group(1)}.{_PER_BLOCK[m.group(2)]}"
        else:
            unknown.append(name)
            continue
        t = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))
        if m and m.group(2) == "attn_q.weight":
            t = unpermute_qk(t, n_heads)
        elif m and m.group(2) == "attn_k.weight":
            t = unpermute_qk(t, n_kv)
        state[ours] = t
    if unknown:
        raise ValueError(
            f"the GGUF file holds tensors the transformer family has no place for: "
            f"{sorted(unknown)[:6]} (biases, rope_freqs or another architecture's layers)"
        )
    _check_shapes(cfg, state)
    return cfg, state


def _check_shapes(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> None:
    from nestlearn.models import build_model

    ref = build_model(cfg, meta=True).state_dict()
    missing = [k for k in ref if k not in state and not (k == "head.weight" and cfg.tie_embeddings)]
    if missing:
        raise ValueError(f"the GGUF file lacks tensors for {missing[:6]}")
    for k, t in state.items():
        if tuple(ref[k].shape) != tuple(t.shape):
            raise ValueError(
                f"tensor {k} has shape {tuple(t.shape)} but the metadata implies "
                f"{tuple(ref[k].shape)}"
            )


def load_gguf_llama(path: str | Path) -> GGUFModel:
    """Read a llama GGUF file into a :class:`GGUFModel` (config, float32 weights, metadata)."""
    fields, tensors, types = read_gguf(path)
    cfg, state = gguf_state_to_model(fields, tensors)
    meta = {
        k: v
        for k, v in fields.items()
        if not k.startswith("tokenizer.ggml.") or not isinstance(v, list)
    }
    meta.pop("tokenizer.chat_template", None)
    logger.info(
        "read %s: %d layers, d=%d, %d/%d heads, vocab %d",
        Path(path).name,
        cfg.n_layers,
        cfg.dim,
        cfg.n_heads,
        cfg.n_kv_heads or cfg.n_heads,
        cfg.vocab_size,
    )
    return GGUFModel(cfg, state, meta, fields, types)
