"""Stream evaluation: segments with the state threaded equal one pass; a saved state continues."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nestlearn.eval.stream import evaluate_stream
from nestlearn.models import ModelConfig, build_model, load_state, save_state
from nestlearn.train.batches import ArrayTokens

F64 = torch.float64


def _titans():
    cfg = ModelConfig(family="titans", vocab_size=40, dim=32, n_layers=2, n_heads=2,
                      mixer={"chunk_size": 8, "max_lr": 0.1})  # fmt: skip
    return build_model(cfg).to(F64)


def _nll(model, tokens: np.ndarray) -> torch.Tensor:
    """Per-target negative log-likelihood of one uninterrupted forward pass."""
    t = torch.from_numpy(tokens)[None]
    logits, _ = model(t[:, :-1])
    return F.cross_entropy(logits[0], t[0, 1:], reduction="none")


def test_segments_equal_one_pass_and_state_continues(tmp_path):
    model = _titans()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 40, 61), rng.integers(0, 40, 30)
    joined = np.concatenate([a, b])
    nll = _nll(model, joined)
    # segments of 16 inputs (not a multiple of the chunk) threaded through the state
    ev, state = evaluate_stream(model, ArrayTokens(a), seq_len=16, max_tokens=10_000)
    assert ev["tokens"] == 60 and state.position == 61  # the last target was fed too
    assert math.isclose(ev["loss"], nll[:60].mean().item(), rel_tol=1e-10)
    # a saved state continues the stream: b's first token is context, the rest are scored
    path = save_state(state, tmp_path / "a.safetensors", model)
    ev_b, state_b = evaluate_stream(
        model, ArrayTokens(b), seq_len=7, max_tokens=10_000, state=load_state(path, model)
    )
    assert ev_b["tokens"] == 29 and state_b.position == 91
    assert math.isclose(ev_b["loss"], nll[61:].mean().item(), rel_tol=1e-10)
    # and it matters: from a fresh state the same tokens score differently
    ev_fresh, _ = evaluate_stream(model, ArrayTokens(b), seq_len=7, max_tokens=10_000)
    assert abs(ev_fresh["loss"] - ev_b["loss"]) > 1e-4


def test_max_tokens_and_bytes():
    model = _titans()
    src = ArrayTokens(np.arange(50) % 40)
    ev, state = evaluate_stream(
        model, src, seq_len=8, max_tokens=20, token_bytes=torch.full((40,), 2.0, dtype=F64)
    )
    assert ev["tokens"] == 20 and state.position == 21
    assert math.isclose(ev["bpb"], ev["loss"] / (2 * math.log(2)), rel_tol=1e-12)
    with pytest.raises(ValueError, match="needs at least 2"):
        evaluate_stream(model, ArrayTokens(np.zeros(1, dtype=np.int64)), seq_len=8, max_tokens=9)
