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

from dataclasses import dataclass
from typing import Any

from nestlearn.layers.ffn import SwiGLU
from nestlearn.memory.neural_memory import NeuralMemory, NeuralMemoryOptions
from nestlearn.models.config import ModelConfig
from nestlearn.models.families._shared import paper_shape, tiny_shape
from nestlearn.models.registry import Family, register_family, register_preset
from nestlearn.models.skeleton import Block
from nestlearn.utils.config import from_dict


@dataclass
class TitansOptions(NeuralMemoryOptions):
    """``model.mixer`` options of the ``titans`` family: the memory's options
    (:class:`~nestlearn.memory.neural_memory.NeuralMemoryOptions`, every field documented there).
    """

    @classmethod
    def from_mapping(
        cls, opts: dict[str, Any], family: str = "titans", skip: tuple[str, ...] = ()
    ) -> Any:
        """``model.mixer`` -> options; unknown keys, and the fields in ``skip``, are refused."""
        return from_dict(
            cls, opts, "model.mixer.", what="model.mixer options", owner=family, skip=skip
        )


def build_neural_memory(cfg: ModelConfig, o: NeuralMemoryOptions, layer: int) -> NeuralMemory:
    """The Titans memory mixer of block ``layer`` from the family options (shared by MAC/MAG/MAL)."""
    return NeuralMemory(cfg.dim, cfg.n_heads, o, init_seed=layer)


def build_titans_block(cfg: ModelConfig, layer: int) -> Block:
    mem = build_neural_memory(cfg, TitansOptions.from_mapping(cfg.mixer), layer)
    return Block(cfg.dim, mem, SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps)


register_family(
    Family(
        "titans",
        build_titans_block,
        "Titans (LMM): chunk-parallel neural memory mixer + SwiGLU",
        supports_naive=True,
    )
)

# FFN width chosen so the tiny preset matches transformer-tiny (3,346,176 parameters at the byte
# vocabulary of 259) within 5%: the memory mixer has ~5.5 d^2 parameters against attention's 4 d^2.
register_preset(
    "titans-tiny",
    "CPU size matched to transformer-tiny: d=256, 4 layers, 4 heads, seq 256, chunk 64",
    family="titans",
    **tiny_shape(),
    ffn_hidden=512,
)
for _size, _dim, _tokens in (("760m", 1536, "30B"), ("1.3b", 2048, "100B")):
    register_preset(
        f"titans-{_size}",
        f"Nested Learning Table 2 {_size.upper()}/{_tokens} shape (d={_dim}, 24 layers), vocab 32K, "
        "seq 4096",
        family="titans",
        **paper_shape(_dim),
    )
