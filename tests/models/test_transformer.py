"""Transformer++ on the shared skeleton: init, step-0 loss, state threading, isolation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nestlearn.models import PRESETS, ModelConfig, build_model, preset_config


def _step0_loss(cfg: ModelConfig, batch: int = 4, seq: int = 64) -> float:
    torch.manual_seed(0)
    model = build_model(cfg, seed=0)
    idx = torch.randint(0, cfg.vocab_size, (batch, seq))
    with torch.no_grad():
        logits, _ = model(idx)
    return F.cross_entropy(logits.flatten(0, 1), idx.flatten()).item()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_step0_loss_near_log_vocab_width_matched(name):
    # Same width, head and vocabulary as the preset but one block: the final RMSNorm
    # fixes the scale the head sees, so this checks every preset's init cheaply.
    cfg = preset_config(name)
    cfg.vocab_size = cfg.vocab_size or 256
    cfg.n_layers = 1
    loss = _step0_loss(cfg)
    assert abs(loss - math.log(cfg.vocab_size)) < 0.1, (name, loss)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_step0_loss_near_log_vocab_full_preset(name):
    cfg = preset_config(name)
    cfg.vocab_size = cfg.vocab_size or 256
    loss = _step0_loss(cfg, batch=2, seq=128)
    assert abs(loss - math.log(cfg.vocab_size)) < 0.1, (name, loss)


def _tiny(**kw) -> ModelConfig:
    base = dict(family="transformer", vocab_size=64, dim=32, n_layers=2, n_heads=4, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_prefill_then_decode_equals_full_forward(kv_heads):
    torch.set_default_dtype(torch.float64)
    model = build_model(_tiny(n_kv_heads=kv_heads)).eval()
    idx = torch.randint(0, 64, (3, 21))
    full, _ = model(idx)
    state = model.init_state(3)
    logits, state = model(idx[:, :9], state=state)
    outs = [logits]
    for t in range(9, 21):
        logits, state = model(idx[:, t : t + 1], state=state)
        outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)
    assert state.position == 21


def test_segments_equal_one_call():
    torch.set_default_dtype(torch.float64)
    model = build_model(_tiny()).eval()
    idx = torch.randint(0, 64, (2, 30))
    full, _ = model(idx)
    state = model.init_state(2)
    parts = []
    for lo, hi in [(0, 7), (7, 8), (8, 25), (25, 30)]:
        logits, state = model(idx[:, lo:hi], state=state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-10, atol=1e-10)


def test_sequences_in_a_batch_are_isolated():
    torch.set_default_dtype(torch.float64)
    model = build_model(_tiny()).eval()
    idx = torch.randint(0, 64, (2, 16))
    base, _ = model(idx)
    idx2 = idx.clone()
    idx2[1] = torch.randint(0, 64, (16,))
    pert, _ = model(idx2)
    torch.testing.assert_close(pert[0], base[0], rtol=0, atol=0)
    assert not torch.allclose(pert[1], base[1])


def test_causal_future_tokens_do_not_change_past_logits():
    model = build_model(_tiny()).eval()
    idx = torch.randint(0, 64, (1, 20))
    a, _ = model(idx)
    idx[0, 15:] = (idx[0, 15:] + 1) % 64
    b, _ = model(idx)
    torch.testing.assert_close(a[:, :15], b[:, :15])
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_meta_build_then_init_is_finite_and_seeded():
    cfg = _tiny(tie_embeddings=True)
    m1, m2 = build_model(cfg, seed=3), build_model(cfg, seed=3)
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.isfinite(p1).all(), n
        assert torch.equal(p1, p2), n
    assert m1.head.weight is m1.embed.weight
    meta = build_model(cfg, meta=True)
    assert all(p.is_meta for p in meta.parameters())
    assert meta.num_params() == m1.num_params()


def test_init_table_scales():
    cfg = _tiny(dim=256, n_layers=8, n_heads=4)
    m = build_model(cfg)
    wq = m.blocks[0].mixer.wq.weight
    wo = m.blocks[0].mixer.wo.weight
    assert abs(wq.std().item() - 0.02) < 0.002
    assert abs(wo.std().item() - 0.02 / math.sqrt(16)) < 0.001
    assert torch.all(m.blocks[0].mixer_norm.weight == 1)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(dim=30, n_heads=4), "divisible by model.n_heads"),
        (dict(n_kv_heads=3), "multiple of model.n_kv_heads"),
        (dict(dim=20, n_heads=4), "even for RoPE"),
        (dict(n_layers=0), "positive integer"),
    ],
)
def test_bad_shapes_fail_with_named_key(kw, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**kw)


def test_unknown_family_and_preset():
    with pytest.raises(ValueError, match="unknown model family"):
        build_model(_tiny(family="nope"))
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("transformer-huge")


def test_flops_per_token_counts_matmuls():
    cfg = _tiny(dim=64, n_layers=2, n_heads=4, vocab_size=100)
    m = build_model(cfg)
    # each block: attention projections 4*d*d, SwiGLU 3*d*h; head d*V; x2 (mul+add) x3 (train)
    h = cfg.ffn_width
    dense = 2 * (2 * (4 * 64 * 64 + 3 * 64 * h)) + 2 * 64 * 100
    attn = 2 * (2 * 2 * 64 * 128 // 2)
    assert m.flops_per_token(128) == 3 * (dense + attn)
