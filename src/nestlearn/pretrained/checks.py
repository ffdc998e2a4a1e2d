"""Sanity checks of a loaded pretrained model: a perplexity and a greedy completion.

Both are cheap (one forward of 512 tokens; a few decoding steps) and catch the usual loader
bugs: a wrong RoPE pairing for GGUF's Q/K layout gives perplexity in the hundreds (measured
175 for SmolLM2-135M), a wrong tokenizer gives nonsense completions.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from nestlearn.models import LanguageModel
from nestlearn.models.generation import generate

__all__ = ["CHECK_DOCUMENT", "greedy_completion", "reference_text", "text_perplexity"]

CHECK_DOCUMENT = "austen/prideprejudice.txt"
"""The embedded-corpus document of the perplexity check (Pride and Prejudice)."""


def reference_text(path: str = CHECK_DOCUMENT) -> str:
    """A document of the embedded corpus by its manifest path (default Pride and Prejudice)."""
    from nestlearn.data import corpus_documents

    for rel, text in corpus_documents("all"):
        if rel == path:
            return text
    raise ValueError(f"{path!r} is not a document of the embedded corpus")


@torch.no_grad()
def text_perplexity(
    model: LanguageModel, tokenizer: Any, text: str, n_tokens: int = 512
) -> dict[str, float]:
    """Perplexity of the first ``n_tokens`` tokens of ``text`` in one window (no prefix token).

    Returns ``{"tokens", "loss", "ppl"}``; ``n_tokens - 1`` predictions are scored.
    """
    ids = tokenizer.encode(text)[:n_tokens]
    if len(ids) < 2:
        raise ValueError("the text is shorter than two tokens")
    was = model.training
    model.eval()
    x = torch.tensor([ids], device=next(model.parameters()).device)
    logits, _ = model(x)
    loss = F.cross_entropy(logits[0, :-1].float(), x[0, 1:]).item()
    model.train(was)
    return {"tokens": len(ids), "loss": loss, "ppl": math.exp(loss)}


def greedy_completion(
    model: LanguageModel, tokenizer: Any, prompt: str, max_new_tokens: int = 8
) -> str:
    """Greedy continuation of ``prompt`` (after the document-start ``eos_id``, as ``nestlearn
    generate`` does); returns only the new text."""
    ids = [tokenizer.eos_id, *tokenizer.encode(prompt)]
    dev = next(model.parameters()).device
    out, _ = generate(
        model,
        torch.tensor([ids], device=dev),
        max_new_tokens,
        temperature=0.0,
        eos_id=tokenizer.eos_id,
    )
    return tokenizer.decode(out[0, len(ids) :].tolist())
