"""CMS ``objective="ntp"`` through plain model calls: the exact driver acts in every call.

The driver itself (first update = the true next-token gradient, meta-gradient = finite
differences) is tested in ``tests/memory/test_cms.py``; here: a plain ``model(x)`` *is* the
driver, updates happen exactly where they should and nowhere else, and a stream split into calls
(prefill + decode included, with or without gradients) equals one call.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nestlearn.layers.attention import CausalSelfAttention
from nestlearn.memory.cms import CMSConfig, ContinuumMemory, frozen_cms
from nestlearn.models import NTPState, set_memory_frozen, uses_ntp
from nestlearn.models.config import ModelConfig
from nestlearn.models.generation import generate
from nestlearn.models.ntp import ntp_forward
from nestlearn.models.skeleton import Block, LanguageModel

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("float64_norm_rope")


def _lm(n_layers: int = 2, dtype: torch.dtype = F64, **cms) -> LanguageModel:
    """Attention + CMS blocks (the Hope-Attention shape); periods 2 and 4, so L = 4."""
    cfg = ModelConfig(vocab_size=32, dim=16, n_layers=n_layers, n_heads=2, init_std=0.2)
    over = dict(periods=(2, 4), hidden_mult=1.0, lr=0.05, lr_max=1.0, objective="ntp")
    over.update(cms)
    blocks = [Block(16, CausalSelfAttention(16, 2), ContinuumMemory(16, CMSConfig(**over)), 1e-6)
              for _ in range(n_layers)]  # fmt: skip
    model = LanguageModel(cfg, blocks)
    model.init_weights(seed=0)
    return model.to(dtype)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_a_plain_call_runs_the_driver_and_updates_exactly_after_the_first_boundary():
    torch.manual_seed(0)
    model = _lm()
    idx = torch.randint(0, 32, (2, 13))
    assert uses_ntp(model)
    logits, _ = model(idx)
    _close(logits, ntp_forward(model, idx).logits)
    with frozen_cms(model):
        assert not uses_ntp(model)
        frozen, _ = model(idx)
    # tokens 0-1 read the initial weights (the fastest level's first boundary is at 2) ...
    _close(logits[:, :2], frozen[:, :2], 1e-12)
    # ... every later token reads weights its predecessors' next-token gradients changed
    gap = (logits[:, 2:] - frozen[:, 2:]).abs().amax(-1)
    assert gap.min() > 1e-6, gap


def test_rate_zero_equals_the_frozen_model():
    model = _lm(lr=0.0, learn_lr=False)
    idx = torch.randint(0, 32, (2, 11))
    logits, _ = model(idx)
    with frozen_cms(model):
        frozen, _ = model(idx)
    _close(logits, frozen)


@pytest.mark.parametrize(
    "cuts,variant",
    [([5, 13], "sequential"), ([4, 8, 12, 13], "sequential"), (list(range(1, 14)), "sequential"),
     ([3, 5, 13], "nested"), ([3, 5, 13], "independent")],
    ids=str,
)  # fmt: skip
def test_calls_without_gradients_equal_one_call(cuts, variant):
    """Evaluation, streaming and prefill + token-by-token decoding (the third cut list)."""
    torch.manual_seed(1)
    model = _lm(variant=variant)
    idx = torch.randint(0, 32, (2, 13))
    with torch.no_grad():
        ref, _ = model(idx)
        st, outs, prev = None, [], 0
        for c in cuts:
            out, st = model(idx[:, prev:c], state=st, return_state=True)
            assert not out.requires_grad
            outs.append(out)
            prev = c
    _close(torch.cat(outs, 1), ref)
    # the last token's term waits for the token that follows
    assert isinstance(st, NTPState) and st.pending is not None and st.position == 13


def test_a_detached_state_keeps_the_pending_term():
    """Truncated backprop (``state.detach()``) at multiples of L = lcm(periods) is exact: the
    last token's term is inner-loop data and survives the cut."""
    torch.manual_seed(2)
    model = _lm()
    idx = torch.randint(0, 32, (2, 12))
    ref, _ = model(idx)
    st, outs = None, []
    for s in range(0, 12, 4):
        out, st = model(idx[:, s : s + 4], state=st, return_state=True)
        outs.append(out.detach())
        st = st.detach()
        assert st.pending is not None
    _close(torch.cat(outs, 1), ref.detach())


def test_calls_with_gradients_equal_one_call_logits_and_meta_gradients():
    """Training on a stream in calls (state not detached) == one call, incl. the exact
    meta-gradient (create_graph through the pending term)."""
    torch.manual_seed(3)
    model = _lm(meta_grad="full")
    idx = torch.randint(0, 32, (2, 12))
    params = list(model.parameters())

    def run(cuts):
        st, outs, prev = None, [], 0
        for c in cuts:
            out, st = model(idx[:, prev:c], state=st, return_state=True)
            outs.append(out)
            prev = c
        logits = torch.cat(outs, 1)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())
        return logits, torch.autograd.grad(loss, params)

    one = run([12])
    for cuts in ([7, 12], [3, 4, 9, 10, 12]):
        other = run(cuts)
        _close(other[0], one[0])
        for a, b in zip(other[1], one[1]):
            _close(a, b, 1e-9)


def test_generate_decodes_like_one_call_and_unlike_the_frozen_model():
    torch.manual_seed(4)
    model = _lm()
    prompt = torch.randint(0, 32, (2, 7))
    out, st = generate(model, prompt, 9, temperature=0)
    ref, _ = model(out)  # one call over prompt and continuation
    assert torch.equal(out[:, 7:], ref[:, 6:-1].argmax(-1))
    # the state after generate continues the stream exactly
    nxt, _ = model(out[:, -1:], state=st)
    _close(nxt[:, 0], ref[:, -1])
    with frozen_cms(model):
        frozen, _ = model(out)
    assert (frozen[:, 7:] - ref[:, 7:]).abs().max() > 1e-4


def test_a_frozen_model_settles_the_pending_term_and_reads_plainly():
    """Freezing after prefill (``--freeze-memory`` style) keeps the prompt's updates, finishes
    the last prompt token's term and updates nothing more."""
    torch.manual_seed(5)
    model = _lm()
    idx = torch.randint(0, 32, (1, 10))
    with torch.no_grad():
        _, st = model(idx[:, :8], return_state=True)
        set_memory_frozen(model, True)
        out, st2 = model(idx[:, 8:], state=st)
        set_memory_frozen(model, False)
    assert not isinstance(st2, NTPState) or st2.pending is None
    lvl = st2.layers[0][1].levels[0]
    assert lvl.grad is not None  # token 7's term was deposited (kept for the next boundary)
    assert out.shape == (1, 2, 32)


def test_ntp_refuses_activation_checkpointing_with_the_fix():
    model = _lm(dtype=torch.float32)
    with pytest.raises(ValueError, match="activation_checkpointing=false, or cms.objective=next"):
        model.set_activation_checkpointing(True)
    model.set_activation_checkpointing(False)


def test_a_pending_state_cannot_be_continued_at_another_position():
    model = _lm()
    idx = torch.randint(0, 32, (1, 6))
    _, st = model(idx[:, :4], return_state=True)
    st.position = 5
    with pytest.raises(ValueError, match="pending next-token term is for position 4"):
        model(idx[:, 4:], state=st)


@pytest.mark.parametrize("family", ["hope", "transformer-cms"])
def test_each_cms_family_runs_the_driver_in_streamed_calls(family):
    """Hope (self-modifying Titans + CMS) and transformer-cms, float32: calls == one call."""
    from nestlearn.models import build_model, preset_config

    cms = {"objective": "ntp", "periods": [2, 4], "lr": 0.5, "learn_lr": False}
    preset = "hope-tiny" if family == "hope" else "hope-attention-tiny"
    mixer = {"cms": cms, "chunk_size": 4} if family == "hope" else {"cms": cms}
    cfg = preset_config(preset, family=family, vocab_size=32, dim=32, n_layers=2, n_heads=2,
                        max_seq_len=32, mixer=mixer)  # fmt: skip
    model = build_model(cfg, seed=0)
    idx = torch.randint(0, 32, (2, 15))
    with torch.no_grad():
        ref, _ = model(idx)
        with frozen_cms(model):
            frozen, _ = model(idx)
        st, outs = None, []
        for a, b in [(0, 5), (5, 6), (6, 13), (13, 15)]:
            out, st = model(idx[:, a:b], state=st, return_state=True)
            outs.append(out)
    assert (ref - frozen).abs().max() > 1e-3
    torch.testing.assert_close(torch.cat(outs, 1), ref, atol=1e-5, rtol=1e-5)


def test_an_ntp_module_called_alone_refuses_instead_of_never_updating():
    cms = ContinuumMemory(16, CMSConfig(objective="ntp", periods=(2,)))
    x = torch.randn(1, 5, 16)
    with pytest.raises(ValueError, match="call the LanguageModel"):
        cms(x)
    cms.frozen = True
    assert cms(x)[0].shape == x.shape  # frozen: a plain read, as documented
