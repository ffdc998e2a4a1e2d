from __future__ import annotations

import pytest
import torch

from nestlearn.models import ModelConfig, build_model
from nestlearn.models.generation import generate, sample_next


def _model():
    return build_model(ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2, max_seq_len=64))


def test_greedy_with_state_equals_recompute():
    model = _model()
    idx = torch.randint(0, 50, (2, 5))
    a, _ = generate(model, idx, 12, temperature=0)
    b, _ = generate(model, idx, 12, temperature=0, use_state=False)
    assert torch.equal(a, b)
    assert a.shape == (2, 17)


def test_sampling_is_seeded():
    model = _model()
    idx = torch.zeros(1, 1, dtype=torch.long)
    a, _ = generate(model, idx, 20, temperature=1.0, top_p=0.9, seed=7)
    b, _ = generate(model, idx, 20, temperature=1.0, top_p=0.9, seed=7)
    c, _ = generate(model, idx, 20, temperature=1.0, top_p=0.9, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_and_top_p_restrict_support():
    logits = torch.tensor([[4.0, 3.0, 2.0, -5.0, -6.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    k = sample_next(logits, top_k=2, generator=g)
    assert set(k.tolist()) == {0, 1}
    # p(0)=0.66, p(0)+p(1)=0.90: top_p=0.8 keeps exactly tokens 0 and 1
    p = sample_next(logits, top_p=0.8, generator=g)
    assert set(p.tolist()) == {0, 1}
    assert set(sample_next(logits, temperature=0).tolist()) == {0}
    with pytest.raises(ValueError):
        sample_next(logits, top_p=1.5)


def test_state_continues_generation():
    model = _model()
    idx = torch.randint(0, 50, (1, 4))
    full, _ = generate(model, idx, 10, temperature=0)
    first, state = generate(model, idx, 4, temperature=0)
    assert state is not None and state.position == 7
    rest, _ = generate(model, first[:, -1:], 6, temperature=0, state=state)
    assert torch.equal(rest, full[:, 7:])
