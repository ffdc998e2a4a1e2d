"""Sampling from a LanguageModel: temperature, top-k, top-p, seeded.

Families that decode with a per-sequence state (KV cache, recurrent memory) prefill the
prompt once and then feed one token at a time; others recompute the whole context.
"""

from __future__ import annotations

import math

import torch

from nestlearn.models.skeleton import LanguageModel, ModelState


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token from ``logits: [B, V]`` -> ``[B]`` int64.

    ``temperature == 0`` is greedy. ``top_k`` keeps the k most likely tokens; ``top_p``
    keeps the smallest set whose probability mass reaches p (nucleus sampling).
    """
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(
            f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}"
        )
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: LanguageModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_id: int | None = None,
    state: ModelState | None = None,
    use_state: bool = True,
) -> tuple[torch.Tensor, ModelState | None]:
    """Continue ``idx: [B, T]`` by ``max_new_tokens`` tokens.

    Returns ``(tokens [B, T + n], state)``. ``state`` (when the model decodes with one) has
    consumed every returned token but the last, so ``generate(model, tokens[:, -1:], m,
    state=state)`` continues the same sequences. Generation stops early when
    every sequence has produced ``eos_id``.
    """
    if idx.ndim != 2 or idx.shape[0] == 0 or idx.shape[1] == 0:
        raise ValueError(
            f"idx must be [batch >= 1, time >= 1] token ids, got shape {tuple(idx.shape)}"
        )
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    was_training = model.training
    model.eval()
    gen = None
    if seed is not None:
        gen = torch.Generator(device=idx.device).manual_seed(seed)
    out = idx
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    try:
        if use_state:  # prefill once, then one token per step
            logits, state = model(idx, state=state, return_state=True)
        for i in range(max_new_tokens):
            if not use_state:
                logits, _ = model(out)  # the whole sequence again, every step
            elif i:
                logits, state = model(out[:, -1:], state=state)
            nxt = sample_next(
                logits[:, -1], temperature=temperature, top_k=top_k, top_p=top_p, generator=gen
            )
            out = torch.cat([out, nxt[:, None]], dim=1)
            if eos_id is not None:
                done |= nxt == eos_id
                if bool(done.all()):
                    break
        if not use_state:
            state = None
    finally:
        model.train(was_training)
    return out, state
