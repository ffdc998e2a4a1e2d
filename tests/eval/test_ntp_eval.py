"""Evaluation of a CMS ``objective=ntp`` model: windows and streams run the exact driver."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nestlearn.eval.stream import evaluate_stream
from nestlearn.models import build_model, frozen_memory, ntp_forward, preset_config
from nestlearn.train.batches import ArrayTokens
from nestlearn.train.validation import evaluate_lm

V = 32
pytestmark = pytest.mark.usefixtures("float64_norm_rope")  # exact float64 comparisons


def _model():
    cms = {"objective": "ntp", "periods": [2, 4], "lr": 2.0, "learn_lr": False}
    cfg = preset_config("hope-attention-tiny", vocab_size=V, dim=32, n_layers=2, n_heads=2,
                        max_seq_len=64, mixer={"cms": cms})  # fmt: skip
    return build_model(cfg, seed=0).double()


def _tokens(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, V, n).astype(np.int64)


def test_window_perplexity_is_the_drivers_and_not_the_frozen_models():
    model, toks = _model(), _tokens(65)
    ev = evaluate_lm(model, ArrayTokens(toks), seq_len=16, batch_size=2, max_tokens=64)
    t = torch.from_numpy(toks[:64]).view(4, 16)
    y = torch.from_numpy(toks[1:65]).view(4, 16)
    with torch.no_grad():
        want = ntp_forward(model, t, y).loss.item()  # every window from a fresh state
    assert ev["loss"] == pytest.approx(want, abs=1e-6)  # evaluate_lm's cross-entropy is float32
    with frozen_memory(model):
        frozen = evaluate_lm(model, ArrayTokens(toks), seq_len=16, batch_size=2, max_tokens=64)
    assert abs(frozen["loss"] - ev["loss"]) > 1e-3


@pytest.mark.parametrize("seq_len", [6, 8])
def test_stream_equals_one_call_over_the_whole_stream(seq_len):
    """``eval --stream``: windows that continue the state equal one uninterrupted call (the
    last token of each window is settled by the next window's first token)."""
    model, toks = _model(), _tokens(41)
    ev, state = evaluate_stream(model, ArrayTokens(toks), seq_len=seq_len, max_tokens=40)
    t = torch.from_numpy(toks)[None]
    with torch.no_grad():
        want = ntp_forward(model, t[:, :-1], t[:, 1:]).loss.item()
    assert ev["tokens"] == 40 and state.position == 41
    assert ev["loss"] == pytest.approx(want, abs=1e-10)
    assert state.pending is not None  # token 40's term waits for the text that follows
