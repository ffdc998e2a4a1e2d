"""Known sequence models as points of the MIRAS space (``docs/nested.md`` shows this table).

Each entry is the :class:`~nestlearn.ops.nested.MemorySpec` of one model's memory level, the op that
runs it (:func:`~nestlearn.ops.nested.dedicated_op`: a dedicated kernel, or the generic chunked
form) and its source. The equivalences are tested (``tests/ops/test_nested.py``,
``tests/test_nested_api.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from nestlearn.models.families.miras import SPECS
from nestlearn.ops.nested import MemorySpec, dedicated_op

__all__ = ["KNOWN_MODELS", "KnownModel", "known_table"]


@dataclass(frozen=True)
class KnownModel:
    spec: MemorySpec
    source: str
    family: str = ""
    """The nestlearn family that trains this model on the skeleton (if any)."""
    note: str = ""


_TTT = dict(bias=True, residual=True, norm="layernorm", scale=0.5, retention="none")
KNOWN_MODELS: dict[str, KnownModel] = {
    "linear attention": KnownModel(
        MemorySpec(memory="matrix", objective="dot", retention="none", chunk_size=1),
        "NL eqs. 15-18",
        note="M_t = M_{t-1} + lr_t v_t k_t^T (lr = 1)",
    ),
    "RetNet / decayed linear attention": KnownModel(
        MemorySpec(memory="matrix", objective="dot", retention="l2", chunk_size=1),
        "NL eq. 64",
        "retnet",
        "RetNet's own op adds xPos and fixed per-head decays",
    ),
    "DeltaNet": KnownModel(
        MemorySpec(memory="matrix", objective="l2", scale=0.5, retention="none", chunk_size=1),
        "NL eq. 65; Yang et al. 2024",
        "deltanet",
    ),
    "TTT-Linear": KnownModel(
        MemorySpec(memory="matrix", chunk_size=16, **_TTT),
        "Sun et al. 2024 §2.7",
        "ttt-linear",
        "mini-batch = chunk_size",
    ),
    "TTT-MLP": KnownModel(
        MemorySpec(activation="gelu_tanh", expansion=4.0, chunk_size=16, **_TTT),
        "Sun et al. 2024 §2.7",
        "ttt-mlp",
    ),
    "Titans (LMM)": KnownModel(
        MemorySpec(momentum=True, expansion=2.0, chunk_size=64),
        "Titans eqs. 12-14",
        "titans",
    ),
    "Hope M_memory": KnownModel(
        MemorySpec(algorithm="dgd", momentum=True, target="self", read="before", chunk_size=32),
        "NL eqs. 86-93",
        "hope",
        "the main-memory pass of self-modifying Titans",
    ),
    "Moneta": KnownModel(MemorySpec(**SPECS["moneta"]), "MIRAS eq. 24", "moneta"),
    "Yaad": KnownModel(MemorySpec(**SPECS["yaad"]), "MIRAS eq. 26", "yaad"),
    "Memora": KnownModel(MemorySpec(**SPECS["memora"]), "MIRAS eq. 27", "memora"),
    "DLA": KnownModel(MemorySpec(**SPECS["dla"]), "ATLAS (arXiv 2505.23735)", "dla"),
    "Muon memory": KnownModel(
        MemorySpec(algorithm="muon", momentum=True, read="chunk", chunk_size=16),
        "ATLAS (its optimizer; not the Omega rule)",
        note="one Newton-Schulz step per chunk",
    ),
}


def known_table() -> str:
    """The markdown table of :data:`KNOWN_MODELS` (``docs/nested.md``)."""
    rows = ["| model | memory | attentional bias | retention | algorithm | chunk / read | runs on | "
            "family | source |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, km in KNOWN_MODELS.items():
        mem, obj, ret, alg, freq = km.spec.describe().split(" | ")
        op = dedicated_op(km.spec) or "generic"
        rows.append(f"| {name} | {mem} | {obj} | {ret} | {alg} | {freq} | {op} | "
                    f"{km.family or '-'} | {km.source} |")  # fmt: skip
    return "\n".join(rows)
