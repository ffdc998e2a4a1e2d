"""The hope and hope-attention families: decode, isolation, step-0 loss, learning, presets,
and the "w/o CMS" switch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nestlearn.memory.cms import ContinuumMemory
from nestlearn.memory.self_modifying import SelfModifyingTitans
from nestlearn.models import ModelConfig, build_model, preset_config


def _cfg(family: str = "hope", **mixer) -> ModelConfig:
    base = {"cms": {"periods": (4, 8)}}
    if family == "hope":
        base.update({"chunk_size": 8, "proj_chunk_size": 4})
    base.update(mixer)
    return ModelConfig(
        family=family, vocab_size=40, dim=32, n_layers=2, n_heads=2, max_seq_len=64, mixer=base
    )


@pytest.mark.parametrize("family", ["hope", "hope-attention"])
def test_prefill_decode_and_segments_equal_one_call(family: str) -> None:
    torch.set_default_dtype(torch.float64)
    model = build_model(_cfg(family)).eval()
    idx = torch.randint(0, 40, (2, 21))
    full, _ = model(idx)
    logits, state = model(idx[:, :6], state=model.init_state(2))
    outs = [logits]
    for t in range(6, 11):
        logits, state = model(idx[:, t : t + 1], state=state)
        outs.append(logits)
    logits, state = model(idx[:, 11:], state=state)
    outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("family", ["hope", "hope-attention"])
def test_sequences_are_isolated_and_causal(family: str) -> None:
    torch.set_default_dtype(torch.float64)
    model = build_model(_cfg(family)).eval()
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


def test_naive_option_matches_chunked() -> None:
    torch.set_default_dtype(torch.float64)
    fast = build_model(_cfg(), seed=1).eval()
    slow = build_model(_cfg(naive=True), seed=1).eval()
    idx = torch.randint(0, 40, (2, 13))
    torch.testing.assert_close(fast(idx)[0], slow(idx)[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("preset", ["hope-tiny", "hope-attention-tiny"])
def test_tiny_presets_match_transformer_tiny_and_step0_loss(preset: str) -> None:
    model = build_model(preset_config(preset, vocab_size=259))
    ref = build_model(preset_config("transformer-tiny", vocab_size=259)).num_params()
    assert abs(model.num_params() / ref - 1) < 0.05
    idx = torch.randint(0, 259, (2, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = F.cross_entropy(model(idx)[0].flatten(0, 1), idx.flatten()).item()
    assert abs(loss - math.log(259)) < 0.1


@pytest.mark.parametrize("family", ["hope", "hope-attention"])
def test_loss_falls_on_an_in_context_copy_task(family: str) -> None:
    torch.manual_seed(0)
    model = build_model(_cfg(family))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = torch.randint(0, 40, (8, 16))
    idx = torch.cat([first, first], 1)
    losses = []
    for _ in range(40):
        logits, _ = model(idx[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses[::8]


def test_without_cms_switch_changes_only_the_ffn() -> None:
    full = build_model(_cfg(), seed=3)
    ablated = build_model(_cfg(cms={"periods": (4, 8), "enabled": False}), seed=3)
    for a, b in zip(full.blocks, ablated.blocks, strict=True):
        assert isinstance(a.mixer, SelfModifyingTitans) and isinstance(b.mixer, SelfModifyingTitans)
        sa, sb = a.mixer.state_dict(), b.mixer.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert isinstance(a.ffn, ContinuumMemory) and isinstance(b.ffn, ContinuumMemory)
        assert a.ffn.mode == "in_context" and b.ffn.mode == "static" and len(b.ffn.levels) == 1


def test_unknown_options_are_named() -> None:
    with pytest.raises(ValueError, match="unknown model.mixer options"):
        build_model(_cfg(chunk=3))
    with pytest.raises(ValueError, match="unknown cms options"):
        build_model(_cfg(cms={"period": 3}))
    with pytest.raises(ValueError, match="unknown model.mixer options"):
        build_model(_cfg("hope-attention", chunk_size=3))
