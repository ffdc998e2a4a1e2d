"""A small vision transformer for 8 x 8 grey images (the ViT of the Fig. 11 analogue).

Patches of ``patch x patch`` pixels are embedded by one linear map, a learned position vector is
added, a learned class token is prepended (``pool="cls"``) and ``depth`` pre-norm blocks of
bidirectional multi-head attention and a SwiGLU MLP follow (RMSNorm and SwiGLU are the
library's own :mod:`nestlearn.layers`; the library's attention is causal with RoPE, so a plain
bidirectional one is written here). The classifier reads the final-normed class token, or the
mean of the patch tokens with ``pool="mean"``.

Parameter names put everything that is not a hidden matrix under ``embed.`` or ``head.``, so
:func:`nestlearn.optim.build_optimizer`'s routing sends the patch projection, the position
table and the class token (and every vector) to the AdamW fallback of Muon and M3, and the
attention and MLP matrices to the method: Muon practice, as in the paper's ViT runs.

Axis legend: B images, H = W image side, P = (H / patch)^2 patches, T = P (+1 with a class
token) tokens, D model width, h heads, d = D / h head width, K classes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.layers.ffn import SwiGLU
from nestlearn.layers.norm import RMSNorm

__all__ = ["ViTConfig", "TinyViT"]

POOLS = ("cls", "mean")


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 8
    """Side of the square grey input images, in pixels."""
    patch: int = 2
    """Side of a square patch; must divide ``image_size`` (2 gives 16 patches of 4 pixels)."""
    dim: int = 64
    """Model width D."""
    depth: int = 3
    """Number of transformer blocks."""
    heads: int = 4
    """Attention heads; must divide ``dim``."""
    mlp_ratio: float = 2.0
    """SwiGLU hidden width as a multiple of ``dim``."""
    pool: str = "cls"
    """``cls`` (a learned class token) or ``mean`` (mean of the patch tokens)."""
    classes: int = 10
    """Number of classes K."""

    def __post_init__(self) -> None:
        for name in ("image_size", "patch", "dim", "depth", "heads", "classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ViT {name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch:
            good = [p for p in range(1, self.image_size + 1) if self.image_size % p == 0]
            raise ValueError(
                f"ViT patch={self.patch} does not divide image_size={self.image_size}; "
                f"use one of {good}"
            )
        if self.dim % self.heads:
            raise ValueError(f"ViT heads={self.heads} must divide dim={self.dim}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"ViT mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.pool not in POOLS:
            raise ValueError(f"ViT pool={self.pool!r}; use one of {POOLS}")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch) ** 2

    @property
    def hidden(self) -> int:
        return max(1, round(self.mlp_ratio * self.dim))

    def to_dict(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    """Bidirectional multi-head attention, ``[B, T, D] -> [B, T, D]``, no bias, no mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, dim = x.shape
        q, k, v = (w(x).view(b, t, self.heads, dim // self.heads).transpose(1, 2)
                   for w in (self.wq, self.wk, self.wv))  # fmt: skip  # [B, h, T, d]
        o = F.scaled_dot_product_attention(q, k, v)
        return self.wo(o.transpose(1, 2).reshape(b, t, dim))


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads)
        self.norm2 = RMSNorm(cfg.dim)
        self.mlp = SwiGLU(cfg.dim, cfg.hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))[0]


class PatchEmbed(nn.Module):
    """Images ``[B, H, W]`` -> tokens ``[B, T, D]``: patch projection, positions, class token."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.patch, self.pool = cfg.patch, cfg.pool
        self.proj = nn.Linear(cfg.patch * cfg.patch, cfg.dim)
        n_tokens = cfg.n_patches + (1 if cfg.pool == "cls" else 0)
        self.pos = nn.Parameter(torch.empty(n_tokens, cfg.dim))
        self.cls = nn.Parameter(torch.empty(cfg.dim)) if cfg.pool == "cls" else None

    def forward(self, images: Tensor) -> Tensor:
        b, p = images.shape[0], self.patch
        # [B, H, W] -> [B, H/p, p, W/p, p] -> [B, H/p, W/p, p, p] -> [B, P, p*p]
        x = images.view(b, images.shape[1] // p, p, images.shape[2] // p, p)
        x = self.proj(x.permute(0, 1, 3, 2, 4).reshape(b, -1, p * p))
        if self.cls is not None:
            x = torch.cat([self.cls.expand(b, 1, -1), x], dim=1)
        return x + self.pos


class TinyViT(nn.Module):
    """The classifier: ``forward(images [B, H, W]) -> logits [B, K]`` (float32).

    Build it, then call :meth:`init_weights` (the constructor leaves parameters uninitialised
    so that the one seeded initialisation below is the only one).
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm = RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.classes)

    @torch.no_grad()
    def init_weights(self, seed: int) -> TinyViT:
        """Every parameter, from a generator seeded with ``seed``: each matrix N(0, 1/fan_in)
        (variance-preserving; the residual output maps ``wo`` and ``w_down`` further divided by
        sqrt(2 depth)), the position table N(0, 0.02²), the class token 0, norm gains 1, biases
        0 and the classifier 0 (so the first loss is exactly ln K)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.startswith("head.") or name.endswith(".bias") or name == "embed.cls":
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)  # RMSNorm gains
            elif name == "embed.pos":
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            else:
                std = p.shape[1] ** -0.5
                if name.endswith(("wo.weight", "w_down.weight")):
                    std /= math.sqrt(2 * self.cfg.depth)
                p.copy_(torch.randn(p.shape, generator=g) * std)
        return self

    def forward(self, images: Tensor) -> Tensor:
        cfg = self.cfg
        if images.ndim != 3 or images.shape[1:] != (cfg.image_size, cfg.image_size):
            raise ValueError(
                f"TinyViT expects images [B, {cfg.image_size}, {cfg.image_size}], "
                f"got {list(images.shape)}"
            )
        x = self.embed(images)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        pooled = x[:, 0] if cfg.pool == "cls" else x.mean(dim=1)
        return self.head(pooled).float()
