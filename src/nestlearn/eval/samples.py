"""Text sampled from a model: what ``nestlearn generate`` and the demo print."""

from __future__ import annotations

from typing import Any

import torch

from nestlearn.models import FAMILIES, LanguageModel
from nestlearn.models.generation import generate


def sample_text(
    model: LanguageModel,
    tok: Any,
    prompt: str,
    n: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
    num_samples: int,
) -> str:
    """``num_samples`` continuations of ``prompt`` (``n`` new tokens each), joined by ``---``.

    Each sample starts a document (the tokenizer's end-of-document id first, as in training,
    where documents are separated by it); end-of-document ids are dropped from the text.
    """
    # training streams separate documents with eos, so eos is what precedes a document start
    ids = tok.encode(prompt) if prompt else []
    if tok.eos_id is not None:
        ids = [tok.eos_id] + ids
    idx = torch.tensor([ids] * num_samples, dtype=torch.long)
    use_state = FAMILIES[model.cfg.family].supports_decode
    out, _ = generate(
        model,
        idx,
        n,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        eos_id=tok.eos_id,
        use_state=use_state,
    )
    texts = []
    for row in out.tolist():
        new = [t for t in row[len(ids) :] if t != tok.eos_id]
        texts.append(prompt + tok.decode(new))
    return "\n---\n".join(texts)
