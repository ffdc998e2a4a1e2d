"""The titans family on the shared skeleton: state threading, isolation, learning, presets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nestlearn.models import ModelConfig, build_model, preset_config


def _cfg(**mixer) -> ModelConfig:
    base = {"chunk_size": 4}
    base.update(mixer)
    return ModelConfig(
        family="titans", vocab_size=40, dim=32, n_layers=2, n_heads=2, max_seq_len=64, mixer=base
    )


@pytest.mark.parametrize(
    "mixer", [{}, {"memory": "linear"}, {"optimizer": "dgd"}, {"momentum": False, "forget": False}]
)
def test_prefill_decode_and_segments_equal_one_call(mixer):
    torch.set_default_dtype(torch.float64)
    model = build_model(_cfg(**mixer)).eval()
    idx = torch.randint(0, 40, (2, 19))
    full, _ = model(idx)
    logits, state = model(idx[:, :6], state=model.init_state(2))
    outs = [logits]
    for t in range(6, 11):
        logits, state = model(idx[:, t : t + 1], state=state)
        outs.append(logits)
    logits, state = model(idx[:, 11:], state=state)
    outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-9, atol=1e-9)


def test_sequences_are_isolated_and_causal():
    torch.set_default_dtype(torch.float64)
    model = build_model(_cfg()).eval()
    idx = torch.randint(0, 40, (2, 16))
    base, _ = model(idx)
    other = idx.clone()
    other[1] = torch.randint(0, 40, (16,))
    pert, _ = model(other)
    assert torch.equal(pert[0], base[0]) and not torch.allclose(pert[1], base[1])
    fut = idx.clone()
    fut[:, 10:] = (fut[:, 10:] + 1) % 40
    b, _ = model(fut)
    torch.testing.assert_close(b[:, :10], base[:, :10], rtol=0, atol=0)


def test_naive_option_matches_chunked():
    torch.set_default_dtype(torch.float64)
    fast = build_model(_cfg(), seed=1).eval()
    slow = build_model(_cfg(naive=True), seed=1).eval()
    idx = torch.randint(0, 40, (2, 13))
    torch.testing.assert_close(fast(idx)[0], slow(idx)[0], rtol=1e-9, atol=1e-9)


def test_tiny_preset_matches_transformer_tiny_and_step0_loss():
    cfg = preset_config("titans-tiny", vocab_size=259)
    model = build_model(cfg)
    ref = build_model(preset_config("transformer-tiny", vocab_size=259)).num_params()
    assert abs(model.num_params() / ref - 1) < 0.05
    idx = torch.randint(0, 259, (2, 128))
    with torch.no_grad():
        loss = F.cross_entropy(model(idx)[0].flatten(0, 1), idx.flatten()).item()
    assert abs(loss - math.log(259)) < 0.1


def test_loss_falls_and_memory_init_gets_gradients():
    torch.manual_seed(0)
    model = build_model(_cfg(chunk_size=8))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # a copy task the memory can solve in context: the second half repeats the first
    first = torch.randint(0, 40, (8, 16))
    idx = torch.cat([first, first], 1)
    losses = []
    for _ in range(30):
        logits, _ = model(idx[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < losses[0] - 0.5
    mem_params = [p for n, p in model.named_parameters() if "blocks.0.mixer" in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mem_params)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="unknown model.mixer options"):
        build_model(_cfg(chunk=3))
