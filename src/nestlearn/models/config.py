"""Model configuration shared by every family on the LanguageModel skeleton."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    """Shape and options of a :class:`~nestlearn.models.skeleton.LanguageModel`.

    Family-specific options (memory chunk sizes, CMS periods, ...) live in ``mixer``, a
    plain mapping that the family validates into its own dataclass when the model is built.
    """

    family: str = "transformer"
    """Which block family builds the layers (``nestlearn list`` shows them)."""
    vocab_size: int = 256
    """Vocabulary size; a run sets it from its tokenizer when left at 0."""
    dim: int = 256
    """Residual stream width."""
    n_layers: int = 4
    """Number of blocks."""
    n_heads: int = 4
    """Attention / memory heads."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; ``None`` means ``n_heads``."""
    ffn_hidden: int | None = None
    """SwiGLU hidden width; ``None`` means 8/3 * dim rounded up to a multiple of 64."""
    max_seq_len: int = 512
    """Longest sequence the model is trained on (attention itself has no hard limit)."""
    rope_base: float = 10000.0
    """RoPE base frequency."""
    rope_interleaved: bool = False
    """RoPE pairing: False = half split (NeoX/HF), True = interleaved pairs (Meta/GGUF)."""
    qk_norm: bool = False
    """RMS-normalise queries and keys per head before attention."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    tie_embeddings: bool = False
    """Share the input embedding with the output head."""
    init_std: float = 0.02
    """Standard deviation of the normal init of input-side matrices (see ``init_weights``)."""
    mixer: dict[str, Any] = field(default_factory=dict)
    """Family-specific options, validated by the family's own options dataclass."""

    def __post_init__(self) -> None:
        for key in ("dim", "n_layers", "n_heads", "max_seq_len"):
            if int(getattr(self, key)) <= 0:
                raise ValueError(
                    f"model.{key} must be a positive integer, got {getattr(self, key)}"
                )
        if self.vocab_size < 0:
            raise ValueError(f"model.vocab_size must be >= 0, got {self.vocab_size}")
        if self.dim % self.n_heads:
            raise ValueError(
                f"model.dim={self.dim} must be divisible by model.n_heads={self.n_heads}; "
                f"try n_heads={_divisor_near(self.dim, self.n_heads)}"
            )
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(
                f"model.n_heads={self.n_heads} must be a multiple of model.n_kv_heads={kv}"
            )
        if (self.dim // self.n_heads) % 2:
            raise ValueError(
                f"head dim dim/n_heads={self.dim // self.n_heads} must be even for RoPE; "
                "change model.dim or model.n_heads"
            )
        if self.ffn_hidden is not None and self.ffn_hidden <= 0:
            raise ValueError(f"model.ffn_hidden must be positive or null, got {self.ffn_hidden}")
        if not self.init_std > 0:
            raise ValueError(f"model.init_std must be > 0, got {self.init_std}")
        if not isinstance(self.mixer, dict):
            raise ValueError(f"model.mixer must be a mapping of options, got {self.mixer!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_width(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        return int(math.ceil(8 * self.dim / 3 / 64) * 64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _divisor_near(n: int, k: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: abs(d - k))
