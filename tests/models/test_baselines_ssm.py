"""Mamba2, Samba, TTT-Linear and TTT-MLP on the shared skeleton.

State threading (one call == segments == prefill + token-by-token decode), per-sequence isolation,
causality, the naive reference path, seeded builds, learning, parameter matching of the tiny
presets, option validation, and the bench harness seeing every family.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from nestlearn import bench
from nestlearn.layers.mamba2 import Mamba2Mixer
from nestlearn.layers.ttt import TTTMixer
from nestlearn.models import FAMILIES, ModelConfig, build_model, preset_config

FAMILIES_HERE = ["mamba2", "samba", "ttt-linear", "ttt-mlp"]
TRANSFORMER_TINY_PARAMS = 3_346_176  # transformer-tiny with the byte tokenizer (vocab 259)
TOL = {"rtol": 1e-9, "atol": 1e-9}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Tiny tensors: a second thread costs more than it saves, and much more on a busy machine.
    # (The shared conftest restores the thread count after each test.)
    torch.set_num_threads(1)


SMALL_MIXER = {
    "mamba2": {"d_state": 8, "head_dim": 16, "chunk_size": 4},
    "samba": {"d_state": 8, "head_dim": 16, "chunk_size": 4, "window": 64},
    "ttt-linear": {"mini_batch_size": 4},
    "ttt-mlp": {"mini_batch_size": 4, "mlp_expand": 2},
}


def _cfg(family: str, **kw) -> ModelConfig:
    base = dict(family=family, vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=64)
    base["mixer"] = dict(SMALL_MIXER[family])
    base["mixer"].update(kw.pop("mixer", {}))
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("name", ["mamba2-tiny", "samba-tiny", "ttt-linear-tiny", "ttt-mlp-tiny"])
def test_tiny_presets_match_transformer_tiny_params(name: str) -> None:
    cfg = preset_config(name, vocab_size=259)
    assert (cfg.dim, cfg.max_seq_len) == (256, 256)
    n = build_model(cfg, meta=True).num_params()
    assert abs(n / TRANSFORMER_TINY_PARAMS - 1) < 0.05, (name, n)


@pytest.mark.parametrize("family", FAMILIES_HERE)
def test_prefill_then_decode_equals_full_forward(family: str) -> None:
    torch.set_default_dtype(torch.float64)
    model = build_model(_cfg(family)).eval()
    idx = torch.randint(0, 64, (3, 23))
    full, _ = model(idx)
    logits, state = model(idx[:, :7], state=model.init_state(3))
    outs = [logits]
    for t in range(7, 23):
        logits, state = model(idx[:, t : t + 1], state=state)
        outs.append(logits)
    assert_close(torch.cat(outs, 1), full, **TOL)
    assert state.position == 23


@pytest.mark.parametrize("family", FAMILIES_HERE)
def test_segments_equal_one_call(family: str) -> None:
    torch.set_default_dtype(torch.float64)
    model = build_model(_cfg(family)).eval()
    idx = torch.randint(0, 64, (2, 30))
    full, _ = model(idx)
    state, parts = model.init_state(2), []
    for lo, hi in [(0, 5), (5, 6), (6, 19), (19, 30)]:  # not aligned with chunks/mini-batches
        logits, state = model(idx[:, lo:hi], state=state)
        parts.append(logits)
    assert_close(torch.cat(parts, 1), full, **TOL)


def test_samba_decode_past_the_window_equals_full_forward() -> None:
    torch.set_default_dtype(torch.float64)
    model = build_model(_cfg("samba", mixer={"window": 5})).eval()
    idx = torch.randint(0, 64, (2, 20))
    full, _ = model(idx)
    logits, state = model(idx[:, :4], state=model.init_state(2))
    outs = [logits]
    for t in range(4, 20):
        logits, state = model(idx[:, t : t + 1], state=state)
        outs.append(logits)
    assert_close(torch.cat(outs, 1), full, **TOL)


@pytest.mark.parametrize("family", FAMILIES_HERE)
def test_sequences_in_a_batch_are_isolated_and_causal(family: str) -> None:
    torch.set_default_dtype(torch.float64)
    model = build_model(_cfg(family)).eval()
    idx = torch.randint(0, 64, (2, 20))
    base, _ = model(idx)
    other = idx.clone()
    other[1] = torch.randint(0, 64, (20,))
    pert, _ = model(other)
    assert torch.equal(pert[0], base[0])
    assert not torch.allclose(pert[1], base[1])
    future = idx.clone()
    future[:, 13:] = (future[:, 13:] + 1) % 64
    fut, _ = model(future)
    assert_close(fut[:, :13], base[:, :13], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(fut[:, 13:], base[:, 13:])


@pytest.mark.parametrize("family", FAMILIES_HERE)
def test_naive_reference_path_equals_fast_path_fwd_bwd(family: str) -> None:
    torch.set_default_dtype(torch.float64)
    fast = build_model(_cfg(family), seed=1)
    slow = build_model(_cfg(family, mixer={"naive": True}), seed=1)
    slow.load_state_dict(fast.state_dict())
    idx = torch.randint(0, 64, (2, 13))
    losses = []
    for model in (fast, slow):
        logits, _ = model(idx)
        loss = F.cross_entropy(logits.flatten(0, 1), idx.flatten())
        loss.backward()
        losses.append(loss)
    assert_close(losses[0], losses[1], **TOL)
    for (name, a), b in zip(fast.named_parameters(), slow.parameters(), strict=True):
        assert_close(a.grad, b.grad, **TOL, msg=lambda m, n=name: f"grad of {n}: {m}")


@pytest.mark.parametrize("family", FAMILIES_HERE)
def test_seeded_build_is_reproducible_and_every_parameter_learns(family: str) -> None:
    cfg = _cfg(family)
    m1, m2 = build_model(cfg, seed=3), build_model(cfg, seed=3)
    for (name, p1), p2 in zip(m1.named_parameters(), m2.parameters(), strict=True):
        assert torch.isfinite(p1).all(), name
        assert torch.equal(p1, p2), name
    idx = torch.randint(0, 64, (2, 24))
    logits, _ = m1(idx)
    F.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
    for name, p in m1.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"


@pytest.mark.parametrize("family", FAMILIES_HERE)
def test_loss_falls_when_fitting_a_batch(family: str) -> None:
    torch.manual_seed(0)
    model = build_model(_cfg(family), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 64, (4, 32))
    losses = []
    for _ in range(25):
        logits, _ = model(idx[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(4.16, abs=0.15)  # ln(64) at step 0
    assert losses[-1] < 0.75 * losses[0], losses


def test_mixers_decode_exactly_at_layer_level() -> None:
    """Without the skeleton's float32 RMSNorm: the mixers alone, one call vs token by token."""
    torch.set_default_dtype(torch.float64)
    mixers = [
        Mamba2Mixer(16, d_state=6, head_dim=8, n_groups=2, chunk_size=3),
        TTTMixer(16, 2, inner="linear", mini_batch_size=3),
        TTTMixer(16, 2, inner="mlp", mini_batch_size=5, gate=True),
    ]
    for mixer in mixers:
        for p in mixer.parameters():  # not an init under test: just non-trivial values
            torch.nn.init.normal_(p, std=0.3)
        mixer.reset_buffers() if hasattr(mixer, "reset_buffers") else None
        x = torch.randn(2, 17, 16)
        full, none = mixer(x)
        assert none is None
        state, outs = mixer.init_state(2, x.device, x.dtype), []
        for t in range(17):
            y, state = mixer(x[:, t : t + 1], state=state)
            outs.append(y)
        assert_close(torch.cat(outs, 1), full, rtol=1e-11, atol=1e-11)
        detached = state.detach()
        assert type(detached) is type(state)


@pytest.mark.parametrize(
    "family, mixer, match",
    [
        ("mamba2", {"d_stat": 4}, "unknown model.mixer options"),
        ("samba", {"pattern": "MX"}, "pattern"),
        ("mamba2", {"ffn": "mlp"}, "ffn"),
        ("mamba2", {"head_dim": 24}, "multiple of head_dim"),
        ("ttt-linear", {"mini_batch_size": 0}, "mini_batch_size"),
        ("ttt-mlp", {"chunk_size": 4}, "unknown model.mixer options"),
    ],
)
def test_bad_options_fail_with_named_key(family: str, mixer: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(_cfg(family, mixer=mixer))


def test_mamba2_ffn_option_and_samba_pattern() -> None:
    m = build_model(_cfg("mamba2"), meta=True)
    assert all(b.ffn is None for b in m.blocks)
    m = build_model(_cfg("mamba2", mixer={"ffn": "swiglu"}), meta=True)
    assert all(b.ffn is not None for b in m.blocks)
    m = build_model(_cfg("samba", n_layers=4), meta=True)
    kinds = [type(b.mixer).__name__ for b in m.blocks]
    assert kinds == ["Mamba2Mixer", "CausalSelfAttention"] * 2
    assert all(b.ffn is not None for b in m.blocks)
    assert m.blocks[1].mixer.window == 64


@pytest.mark.parametrize("family", FAMILIES_HERE)
def test_bench_harness_runs_every_family(family: str) -> None:
    assert family in FAMILIES
    cfg, applied = bench.resolve_config(family, naive=True)
    assert applied and cfg.mixer == {"naive": True}
    rec = bench.bench_model(
        family, dim=32, layers=2, vocab=64, batch=2, seq=16, steps=1, warmup=0,
        decode_context=(8,), decode_tokens=2, peak_gflops=1.0, threads=1,
    )  # fmt: skip
    assert rec["family"] == family and rec["params"] > 0
    for key in ("train_tokens_per_s", "fwd_tokens_per_s", "decode_tokens_per_s"):
        assert rec[key] > 0, key
