"""Titans MAC / MAG / MAL on the shared skeleton: attention reference, state threading, causality,
isolation, learning, state detach, presets and options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nestlearn.layers.attention import CausalSelfAttention, KVCache
from nestlearn.layers.persistent_attention import PersistentAttention
from nestlearn.layers.rope import apply_rope, rope_cos_sin
from nestlearn.models import FAMILIES, ModelConfig, build_model, preset_config

VARIANTS = ["titans-mac", "titans-mag", "titans-mal"]
F64 = torch.float64


def _cfg(family: str, **mixer) -> ModelConfig:
    # small segments / windows and a memory chunk (3) that does not divide them, so one call
    # crosses several segments, windows and chunks at unaligned places
    base = {"chunk_size": 3, "n_persistent": 3}
    base.update({"segment_size": 4} if family == "titans-mac" else {"window": 5})
    base.update(mixer)
    return ModelConfig(
        family=family, vocab_size=40, dim=32, n_layers=2, n_heads=2, max_seq_len=64, mixer=base
    )


# ------------------------------------------------------------------ attention against a reference
def _reference_attention(attn: PersistentAttention, x, h=None):
    """Explicit softmax over [P || (h) || x]: persistent keys unrotated against the unrotated
    query; MAC (``h`` given): one segment, local positions, token i sees h_<=i and x_<=i; else
    causal sliding window over x at absolute positions."""
    B, T, _ = x.shape
    H, G, D = attn.n_heads, attn.n_kv_heads, attn.head_dim

    def proj(lin, t, heads):
        return lin(t).view(t.shape[0], t.shape[1], heads, D)

    cos, sin = rope_cos_sin(torch.arange(T), attn.inv_freq)
    q_raw = proj(attn.wq, x, H)
    q = apply_rope(q_raw, cos, sin)
    kx, vx = apply_rope(proj(attn.wk, x, G), cos, sin), proj(attn.wv, x, G)
    P = attn.persistent[None]
    kp, vp = proj(attn.wk, P, G).expand(B, -1, -1, -1), proj(attn.wv, P, G).expand(B, -1, -1, -1)
    rep = H // G
    out = torch.zeros(B, T, H, D, dtype=x.dtype)
    for i in range(T):
        for hd in range(H):
            g = hd // rep
            scores = [torch.einsum("bd,bnd->bn", q_raw[:, i, hd], kp[:, :, g])]
            values = [vp[:, :, g]]
            visible = [j for j in range(T) if j <= i and (h is not None or j > i - attn.window)]
            if h is not None:
                kh = apply_rope(proj(attn.wk, h, G), cos, sin)
                vh = proj(attn.wv, h, G)
                scores.append(torch.einsum("bd,bjd->bj", q[:, i, hd], kh[:, visible, g]))
                values.append(vh[:, visible, g])
            scores.append(torch.einsum("bd,bjd->bj", q[:, i, hd], kx[:, visible, g]))
            values.append(vx[:, visible, g])
            w = torch.softmax(torch.cat(scores, -1) / math.sqrt(D), -1)
            out[:, i, hd] = torch.einsum("bj,bjd->bd", w, torch.cat(values, 1))
    return out.reshape(B, T, H * D)


def _attn(window, n_persistent=3, kv_heads=None):
    torch.manual_seed(0)
    a = PersistentAttention(16, 4, kv_heads, n_persistent=n_persistent, window=window).to(F64)
    for p in a.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return a


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_sliding_window_with_persistent_tokens_matches_explicit_softmax(kv_heads):
    attn = _attn(window=4, kv_heads=kv_heads)
    x = torch.randn(2, 11, 16, dtype=F64)
    y, _ = attn.heads(x)
    torch.testing.assert_close(y, _reference_attention(attn, x), rtol=1e-10, atol=1e-12)
    # and with a cache: prefill 5, then one token at a time (the cache keeps the last window)
    state = attn.init_state(2, x.device, F64)
    outs = []
    for a, b in [(0, 5)] + [(t, t + 1) for t in range(5, 11)]:
        o, state = attn.heads(x[:, a:b], state=state)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-10, atol=1e-12)
    assert state.length == 4 and state.position == 11


def test_mac_segment_attention_matches_explicit_softmax():
    attn = _attn(window=None)
    x, h = torch.randn(2, 7, 16, dtype=F64), torch.randn(2, 7, 16, dtype=F64)
    y, _ = attn.segment_heads(x, h)
    torch.testing.assert_close(y, _reference_attention(attn, x, h), rtol=1e-10, atol=1e-12)
    y1, cache = attn.segment_heads(x[:, :3], h[:, :3])
    y2, cache = attn.segment_heads(x[:, 3:], h[:, 3:], cache)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-10, atol=1e-12)
    assert cache[0].length == cache[1].length == 7


def test_no_persistent_tokens_is_the_plain_attention_layer():
    """Without persistent tokens the subclass computes exactly CausalSelfAttention's output."""
    for window in (None, 4):
        new = _attn(window=window, n_persistent=0)
        old = CausalSelfAttention(16, 4, window=window).to(F64)
        old.load_state_dict(new.state_dict())
        x = torch.randn(2, 9, 16, dtype=F64)
        torch.testing.assert_close(new(x)[0], old(x)[0], rtol=1e-12, atol=1e-13)
        s_new, s_old = new.init_state(2, x.device, F64), old.init_state(2, x.device, F64)
        for a, b in [(0, 6), (6, 7), (7, 9)]:
            y_new, s_new = new(x[:, a:b], state=s_new)
            y_old, s_old = old(x[:, a:b], state=s_old)
            torch.testing.assert_close(y_new, y_old, rtol=1e-12, atol=1e-13)
        assert isinstance(s_new, KVCache) and s_new.start == s_old.start


# ------------------------------------------------------------------------------- models
@pytest.mark.parametrize("family", VARIANTS)
def test_prefill_decode_and_segments_equal_one_call(family):
    torch.set_default_dtype(F64)
    model = build_model(_cfg(family)).eval()
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
    assert state.position == 19


@pytest.mark.parametrize("family", VARIANTS)
def test_causal_and_sequences_isolated(family):
    torch.set_default_dtype(F64)
    model = build_model(_cfg(family)).eval()
    idx = torch.randint(0, 40, (2, 16))
    base, _ = model(idx)
    # position 9 is mid-segment (MAC segments 8..11) and mid-window: nothing before it moves
    fut = idx.clone()
    fut[:, 9:] = (fut[:, 9:] + 1) % 40
    changed, _ = model(fut)
    torch.testing.assert_close(changed[:, :9], base[:, :9], rtol=0, atol=0)
    assert not torch.allclose(changed[:, 9], base[:, 9])
    other = idx.clone()
    other[1] = torch.randint(0, 40, (16,))
    pert, _ = model(other)
    assert torch.equal(pert[0], base[0]) and not torch.allclose(pert[1], base[1])


@pytest.mark.parametrize("family", VARIANTS)
def test_memory_reaches_past_the_attention_span(family):
    """A token older than the window / segment still changes the output, through the memory."""
    torch.set_default_dtype(F64)
    model = build_model(_cfg(family, n_persistent=0)).eval()
    idx = torch.randint(0, 40, (1, 16))
    base, _ = model(idx)
    early = idx.clone()
    early[:, 0] = (early[:, 0] + 1) % 40
    changed, _ = model(early)
    # the last token sees no raw key of token 0 (window 5 / later segment) in any layer's
    # attention; with two layers it can still reach it only through the memory
    assert (changed[0, -1] - base[0, -1]).abs().max() > 1e-6


@pytest.mark.parametrize("family", VARIANTS)
def test_naive_memory_op_matches_chunked(family):
    torch.set_default_dtype(F64)
    fast = build_model(_cfg(family), seed=1).eval()
    slow = build_model(_cfg(family, naive=True), seed=1).eval()
    idx = torch.randint(0, 40, (2, 13))
    torch.testing.assert_close(fast(idx)[0], slow(idx)[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("family", VARIANTS)
def test_loss_falls_and_every_part_learns(family):
    torch.manual_seed(0)
    span = {"segment_size": 8} if family == "titans-mac" else {"window": 8}
    model = build_model(_cfg(family, chunk_size=8, n_persistent=4, **span))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = torch.randint(0, 40, (8, 16))
    idx = torch.cat([first, first], 1)  # the second half repeats the first
    losses = []
    for _ in range(25):
        logits, _ = model(idx[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < losses[0] - 0.5, losses
    grads = {n: p.grad for n, p in model.named_parameters()}
    for part in ("mixer.attn.persistent", "mixer.memory.mem_init.0", "mixer.attn.wo.weight"):
        g = grads[f"blocks.0.{part}"]
        assert g is not None and g.abs().sum() > 0, part


@pytest.mark.parametrize("family", VARIANTS)
def test_state_detach_cuts_the_graph_and_keeps_values(family):
    model = build_model(_cfg(family))
    idx = torch.randint(0, 40, (2, 14))
    _, state = model(idx[:, :9], return_state=True)
    tensors = _tensors(state)
    assert any(t.requires_grad for t in tensors)
    det = state.detach()
    assert all(not t.requires_grad for t in _tensors(det))
    assert all(torch.equal(a, b) for a, b in zip(_tensors(det), tensors, strict=True))
    # truncated BPTT: the second segment trains on its own graph
    logits, _ = model(idx[:, 9:], state=det)
    logits.square().mean().backward()
    ref, _ = model(idx[:, 9:], state=state)
    torch.testing.assert_close(logits, ref)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if hasattr(obj, "__dataclass_fields__"):
        return [t for f in obj.__dataclass_fields__ for t in _tensors(getattr(obj, f))]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    return []


@pytest.mark.parametrize("family", VARIANTS)
def test_tiny_preset_matches_transformer_tiny_and_step0_loss(family):
    ref = build_model(preset_config("transformer-tiny", vocab_size=259), meta=True).num_params()
    assert ref == 3_346_176
    model = build_model(preset_config(f"{family}-tiny", vocab_size=259))
    assert abs(model.num_params() / ref - 1) < 0.05
    idx = torch.randint(0, 259, (2, 160))  # crosses segments / windows of 64
    with torch.no_grad():
        loss = F.cross_entropy(model(idx)[0].flatten(0, 1), idx.flatten()).item()
    assert abs(loss - math.log(259)) < 0.1


@pytest.mark.parametrize("family", VARIANTS)
@pytest.mark.parametrize("size", ["760m", "1.3b"])
def test_paper_shapes_match_the_transformer_presets(family, size):
    ref = build_model(preset_config(f"transformer-{size}"), meta=True).num_params()
    n = build_model(preset_config(f"{family}-{size}"), meta=True).num_params()
    assert abs(n / ref - 1) < 0.01


def test_families_declare_decode_and_naive():
    for f in VARIANTS:
        assert FAMILIES[f].supports_decode and getattr(FAMILIES[f], "supports_naive", False)


def test_options_are_checked_per_family():
    with pytest.raises(
        ValueError, match=r"unknown model.mixer options \['window'\] for titans-mac"
    ):
        build_model(_cfg("titans-mac", window=8))
    with pytest.raises(ValueError, match=r"\['segment_size'\] for titans-mag"):
        build_model(_cfg("titans-mag", segment_size=8))
    with pytest.raises(ValueError, match=r"\['chunk'\]"):
        build_model(_cfg("titans-mal", chunk=8))
    with pytest.raises(ValueError, match="segment_size must be >= 1"):
        build_model(_cfg("titans-mac", segment_size=0))
    with pytest.raises(ValueError, match="n_persistent must be >= 0"):
        build_model(_cfg("titans-mag", n_persistent=-1))
