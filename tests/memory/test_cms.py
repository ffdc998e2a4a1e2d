"""Continuum Memory System: op equivalence, schedules, streaming, isolation, modes and drivers.

Every check is numerical: the chunk-parallel op against the per-token autograd reference in
float64 (forward and backward, incl. the initial state and the learning rate), exact schedules,
bit-exact lr = 0, segment/decode equivalence, and the exact next-token driver against
independent computations and finite differences.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nestlearn.layers.attention import CausalSelfAttention
from nestlearn.memory.cms import (
    CMSConfig,
    CMSState,
    ContinuumMemory,
    attach_outer_schedule,
    frozen_cms,
)
from nestlearn.models.config import ModelConfig
from nestlearn.models.ntp import ntp_forward
from nestlearn.models.skeleton import Block, LanguageModel
from nestlearn.ops.cms import CMSLevelState, chunk_cms_level, fold_pending, naive_cms_level

F64 = torch.float64


def _pairs(
    st: CMSLevelState, w: tuple | None = None, act: str = "swiglu", fo: bool = False
) -> list:
    """A state's tensors in canonical form (deferred terms folded into ``grad``)."""
    if w is not None:
        st = fold_pending(st, *w, activation=act, first_order=fo)
    return [*(st.delta or (None, None)), *(st.grad or (None, None)), st.pending]


def _close(a: torch.Tensor | None, b: torch.Tensor | None, tol: float = 1e-10) -> None:
    if a is None or b is None:  # None stands for zeros
        other = b if a is None else a
        assert other is None or other.abs().max() <= tol
        return
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def _weights(D: int, H: int, act: str, scale: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    hin = 2 * H if act == "swiglu" else H
    w_in = (torch.randn(hin, D, dtype=F64) * scale).requires_grad_()
    w_out = (torch.randn(D, H, dtype=F64) * scale).requires_grad_()
    return w_in, w_out


# ----------------------------------------------------------------------------- op level
@pytest.mark.parametrize(
    "act,first_order,reset,retention",
    [
        pytest.param("swiglu", False, None, 0.0, id="swiglu-full"),
        pytest.param("swiglu", True, None, 0.0, id="swiglu-first-order"),
        pytest.param("swiglu", False, 8, 0.0, id="swiglu-nested"),
        pytest.param("gelu", False, None, 0.0, id="gelu-full"),
        pytest.param("relu", True, 8, 0.0, id="relu-first-order-nested"),
        pytest.param("silu", False, None, 0.0, id="silu-full"),
        pytest.param("swiglu", False, None, 0.2, id="swiglu-full-retention"),
        pytest.param("gelu", True, None, 0.35, id="gelu-first-order-retention"),
    ],
)
def test_chunk_op_matches_naive_fwd_bwd_float64(act, first_order, reset, retention):
    """Fast op == per-token autograd loop, incl. a mid-chunk initial state and awkward T."""
    B, T, D, H, C = 2, 24, 6, 5, 4
    x = torch.randn(B, T, D, dtype=F64, requires_grad=True)
    w_in, w_out = _weights(D, H, act)
    lr = torch.tensor(0.07, dtype=F64, requires_grad=True)
    rlr = torch.tensor(0.03, dtype=F64, requires_grad=True) if reset else None
    hin = w_in.shape[0]

    def t(*s: int) -> torch.Tensor:
        return (torch.randn(*s, dtype=F64) * 0.1).requires_grad_()

    init = CMSLevelState(
        delta=(t(B, hin, D), t(B, D, H)),
        grad=(t(B, hin, D), t(B, D, H)),
        pending=t(B, 2, D),  # the chunk's first two inputs, terms deferred
        anchor=(t(B, hin, D), t(B, D, H)) if reset else None,
        anchor_grad=(t(B, hin, D), t(B, D, H)) if reset else None,
        position=6,  # mid-chunk: 2 tokens left in the chunk, nested reset at 8
    )
    kw = dict(period=C, activation=act, first_order=first_order, reset_period=reset,
              reset_lr=rlr, output_final_state=True, retention=retention)  # fmt: skip
    y1, s1 = chunk_cms_level(x, w_in, w_out, lr, init, **kw)
    y2, s2 = naive_cms_level(x, w_in, w_out, lr, init, **kw)
    _close(y1, y2)
    assert s1.position == s2.position == 6 + T
    for a, b in zip(_pairs(s1, (w_in, w_out), act, first_order), _pairs(s2)):
        _close(a, b)
    gy = torch.randn_like(y1)
    wrt = [x, w_in, w_out, lr, *init.delta, *init.grad, init.pending]
    wrt += [*init.anchor, rlr] if reset else []

    def obj(y, s):
        out = (y * gy).sum() + (s.delta[0] * 0.3).sum() + s.grad[1].sum() + s.pending.sum()
        return out + (s.anchor[0].sum() if reset else 0)

    s1 = fold_pending(s1, w_in, w_out, activation=act, first_order=first_order)
    g1 = torch.autograd.grad(obj(y1, s1), wrt, allow_unused=True)
    g2 = torch.autograd.grad(obj(y2, s2), wrt, allow_unused=True)
    for a, b in zip(g1, g2):
        _close(a, b, 1e-9)


def test_retention_pulls_a_stream_back_toward_the_initial_weights():
    """With retention r the fast-weight offset obeys Delta' = (1 - r) Delta - lr g: over a long
    stream it stays near W_0 (about lr |g| / r), where plain eq. 71 (r = 0) keeps moving; the
    nested variant refuses it (it restarts from its anchor instead)."""
    B, T, D, H = 1, 4096, 6, 5
    x = torch.randn(B, T, D, dtype=F64)
    w_in, w_out = _weights(D, H, "swiglu")
    norms = {}
    for r in (0.0, 0.1):
        st, sizes = None, []
        for s0 in range(0, T, 256):
            _, st = chunk_cms_level(x[:, s0 : s0 + 256], w_in, w_out, 0.05, st, period=4,
                                    retention=r, output_final_state=True)  # fmt: skip
            sizes.append(float(st.delta[0].norm() + st.delta[1].norm()))
        norms[r] = sizes
    assert norms[0.0][-1] > 1.3 * norms[0.0][0]  # eq. 71 keeps moving away along the stream
    assert max(norms[0.1]) < 0.5 * min(norms[0.0])  # retention: far closer to W_0 throughout
    assert max(norms[0.1][8:]) < 1.5 * max(norms[0.1][:8])  # and no growth along the stream
    for bad, match in ((1.0, "in \\[0, 1\\)"), (-0.1, "in \\[0, 1\\)")):
        with pytest.raises(ValueError, match=match):
            chunk_cms_level(x[:, :8], w_in, w_out, 0.05, period=4, retention=bad)
    with pytest.raises(ValueError, match="nested variant"):
        chunk_cms_level(x[:, :8], w_in, w_out, 0.05, period=4, reset_period=8, retention=0.1)


@pytest.mark.parametrize("split", [[23], [4, 19], [5, 1, 1, 9, 7], [1] * 23])
def test_chunk_op_segments_equal_one_call(split):
    B, T, D, H = 2, 23, 6, 5
    x = torch.randn(B, T, D, dtype=F64)
    w_in, w_out = _weights(D, H, "swiglu")
    kw = dict(period=4, reset_period=8, output_final_state=True)
    y_full, s_full = chunk_cms_level(x, w_in, w_out, 0.05, **kw)
    st, ys, s0 = None, [], 0
    for n in split:
        y, st = chunk_cms_level(x[:, s0 : s0 + n], w_in, w_out, 0.05, st, **kw)
        ys.append(y)
        s0 += n
    _close(torch.cat(ys, 1), y_full)
    for a, b in zip(_pairs(st, (w_in, w_out)), _pairs(s_full, (w_in, w_out))):
        _close(a, b)


def test_in_context_update_lowers_the_local_loss_on_repeats():
    """Test-time learning works: a repeated pattern is predicted better each time it recurs."""
    torch.manual_seed(0)
    B, D, H, P, R = 2, 8, 32, 8, 8
    pattern = F.normalize(torch.randn(B, P, D, dtype=F64), dim=-1) * math.sqrt(D)
    x = pattern.repeat(1, R, 1)  # [B, P * R, D]
    w_in, w_out = (w.detach() for w in _weights(D, H, "swiglu", scale=0.2))
    y, _ = chunk_cms_level(x, w_in, w_out, 0.05, period=4)
    err = (y[:, :-1] - x[:, 1:]).pow(2).sum(-1)  # the level's own next-input error per token
    per_repeat = torch.stack([err[:, r * P : (r + 1) * P - 1].mean() for r in range(R)])
    assert (per_repeat[1:] < per_repeat[:-1]).all(), per_repeat
    assert per_repeat[-1] < 0.2 * per_repeat[0], per_repeat
    y0, _ = chunk_cms_level(x, w_in, w_out, 0.0, period=4)  # no learning: no improvement
    err0 = (y0[:, :-1] - x[:, 1:]).pow(2).sum(-1)
    torch.testing.assert_close(err0[:, -P + 1 :], err0[:, : P - 1])


# ----------------------------------------------------------------------------- module
def _module(D: int = 8, **over) -> ContinuumMemory:
    cfg = dict(periods=(2, 4, 8), hidden_mult=1.0, lr=0.05, lr_max=1.0)
    cfg.update(over)
    m = ContinuumMemory(D, CMSConfig(**cfg)).to(F64)
    for p in m.parameters():
        if p.ndim == 2:
            torch.nn.init.normal_(p, std=0.2)
    return m


@pytest.mark.parametrize("variant", ["sequential", "nested", "independent"])
@pytest.mark.parametrize("meta_grad", ["full", "first_order"])
def test_module_matches_naive_chain_fwd_bwd(variant, meta_grad):
    """The module's chain == the same chain built from the naive per-token level op (with the
    default retention: r > 0 for sequential/independent, 0 for nested)."""
    m = _module(variant=variant, meta_grad=meta_grad)
    assert (m.cfg.retention > 0) == (variant != "nested")
    x = torch.randn(2, 19, 8, dtype=F64, requires_grad=True)
    y, _ = m(x)
    eta = m.lrs() / torch.tensor(m.periods, dtype=F64)
    K, u, ref = len(m.levels), x, 0
    for i, level in enumerate(m.levels):
        nested = variant == "nested" and i < K - 1
        inp = x if variant == "independent" else level.normed(u)
        b, _ = naive_cms_level(
            inp, *level.weights(), eta[i], period=m.periods[i],
            reset_period=m.periods[i + 1] if nested else None,
            reset_lr=eta[i + 1] if nested else None, first_order=meta_grad == "first_order",
            retention=m.cfg.retention,
        )  # fmt: skip
        if variant == "independent":
            b = b * m.agg[i]
        u = u + b
        ref = ref + b
    _close(y, ref)
    gy = torch.randn_like(y)
    params = [x, *m.parameters()]
    for a, b in zip(torch.autograd.grad((y * gy).sum(), params),
                    torch.autograd.grad((ref * gy).sum(), params)):  # fmt: skip
        _close(a, b, 1e-9)


@pytest.mark.parametrize("variant", ["sequential", "nested"])
def test_level_weights_change_exactly_at_multiples_of_their_period(variant):
    m = _module(variant=variant)
    x = torch.randn(2, 40, 8, dtype=F64)
    st = m.init_state(2, x.device, F64)
    prev = [None] * len(m.levels)
    with torch.no_grad():
        for p in range(40):
            _, st = m(x[:, p : p + 1], state=st)  # st.levels[l].delta = weights used at p
            for i, ls in enumerate(st.levels):
                d = (
                    torch.zeros(1, dtype=F64)
                    if ls.delta is None
                    else torch.cat([t.flatten() for t in ls.delta])
                )
                if prev[i] is not None:
                    changed = d.shape != prev[i].shape or not torch.equal(d, prev[i])
                    assert changed == (p % m.periods[i] == 0), (variant, i, p)
                prev[i] = d


def test_learning_rate_zero_is_the_static_chain_bit_for_bit():
    """lr = 0: the fast weights never move (bitwise, any backend) and the output is the static
    chain bit for bit. The second part relies on the BLAS computing each output row the same way
    whatever the row count, which holds for the CPU kernels torch ships at >= 16 rows."""
    D = 32
    ctx = _module(D, periods=(16, 32, 64), lr=0.0, learn_lr=False).float()
    static = ContinuumMemory(D, CMSConfig(periods=(16, 32, 64), hidden_mult=1.0, mode="static"))
    static.load_state_dict(ctx.state_dict(), strict=False)
    x = torch.randn(3, 128, D)
    st = ctx.init_state(3, x.device, x.dtype)
    y_ctx, st = ctx(x, state=st)
    y_static, _ = static(x)
    assert torch.equal(y_ctx, y_static)
    for lvl, ls in zip(ctx.levels, st.levels):
        assert ls.delta is not None and all(torch.equal(t, torch.zeros_like(t)) for t in ls.delta)
        folded = fold_pending(ls, *lvl.weights())
        assert folded.grad[0].abs().sum() > 0  # the gradients exist; only the step is zero
    with torch.no_grad():  # and it is the plain chain of SwiGLU MLPs (independent reference)
        u, ref = x, 0
        for lvl in ctx.levels:
            n = lvl.normed(u)
            b = lvl.w_down(F.silu(lvl.w_gate(n)) * lvl.w_up(n))
            u, ref = u + b, ref + b
    torch.testing.assert_close(y_ctx, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", ["sequential", "nested", "independent"])
def test_one_call_equals_segments_and_prefill_plus_decode(variant):
    m = _module(variant=variant)
    x = torch.randn(2, 30, 8, dtype=F64)
    y_fresh, none = m(x)
    assert none is None
    y_full, s_full = m(x, state=m.init_state(2, x.device, F64))
    _close(y_fresh, y_full)
    for cuts in ([8, 16, 24], [3, 11, 12, 29]):  # chunk-aligned, then arbitrary
        st, ys, prev = m.init_state(2, x.device, F64), [], 0
        for c in [*cuts, 30]:
            y, st = m(x[:, prev:c], state=st)
            ys.append(y)
            prev = c
        _close(torch.cat(ys, 1), y_full)
    st, ys = m.init_state(2, x.device, F64), []
    y, st = m(x[:, :13], state=st)
    ys.append(y)
    sizes = []
    for p in range(13, 30):  # decode: O(1) state whatever the context length
        y, st = m(x[:, p : p + 1], state=st)
        ys.append(y)
        sizes.append(sum(t.numel() for t in CMSState.to_dict(st).values()))
    _close(torch.cat(ys, 1), y_full)
    bound = sum(2 * (lvl.weights()[0].numel() + lvl.weights()[1].numel()) + 8 for lvl in m.levels)
    assert max(sizes[:8]) == max(sizes[8:]) and max(sizes) <= 2 * (2 * bound + len(m.levels))
    for lvl, a, b in zip(m.levels, st.levels, s_full.levels):
        w = tuple(t.detach() for t in lvl.weights())
        for u, v in zip(_pairs(a, w), _pairs(b, w)):
            _close(u, v)


def test_sequences_in_a_batch_are_isolated():
    m = _module()
    x = torch.randn(3, 25, 8, dtype=F64)
    x2 = x.clone()
    x2[1] = torch.randn(25, 8, dtype=F64)
    y, s = m(x, state=m.init_state(3, x.device, F64))
    y2, s2 = m(x2, state=m.init_state(3, x.device, F64))
    keep = torch.tensor([0, 2])
    _close(y[keep], y2[keep], 1e-12)
    assert (y[1] - y2[1]).abs().max() > 1e-3
    for a, b in zip(s.levels, s2.levels):
        _close(a.delta[0][keep], b.delta[0][keep], 1e-12)
    y_single, _ = m(x[2:3])
    _close(y_single, y[2:3], 1e-12)


def test_frozen_reads_without_updating_and_state_round_trips():
    m = _module()
    x = torch.randn(2, 40, 8, dtype=F64)
    y_ref, s_ref = m(x, state=m.init_state(2, x.device, F64))
    _, st = m(x[:, :20], state=m.init_state(2, x.device, F64))
    restored = CMSState.from_dict({k: v.clone() for k, v in st.to_dict().items()})
    y_b, _ = m(x[:, 20:], state=restored)
    _close(y_b, y_ref[:, 20:])
    with frozen_cms(m):
        y_f, s_f = m(x[:, 20:], state=st)
    assert not m.frozen
    assert s_f.position == 40
    for a, b in zip(st.levels, s_f.levels):
        assert all(torch.equal(u, v) for u, v in zip(a.delta, b.delta))
    # frozen = the chain with the adapted weights held fixed (an lr = 0 module on that state)
    m0 = _module(lr=0.0, learn_lr=False, retention=0.0)  # frozen: no step and no retention
    m0.load_state_dict(m.state_dict(), strict=False)
    y0, _ = m0(x[:, 20:], state=st)
    _close(y_f, y0, 1e-12)
    assert (y_f - y_ref[:, 20:]).abs().max() > 1e-4


def test_without_cms_is_one_static_mlp_of_the_same_size():
    on = ContinuumMemory(64, CMSConfig())
    off = ContinuumMemory(64, CMSConfig(enabled=False))
    n_on = sum(p.numel() for n, p in on.named_parameters() if "levels" in n and p.ndim == 2)
    n_off = sum(p.numel() for p in off.parameters())
    assert n_on == n_off and len(off.levels) == 1 and off.init_state(1, None, None) is None
    x = torch.randn(2, 10, 64)
    lvl = off.levels[0]
    torch.testing.assert_close(off(x)[0], lvl.w_down(F.silu(lvl.w_gate(x)) * lvl.w_up(x)))


@pytest.mark.parametrize(
    "over,match",
    [
        ({"periods": (16, 16)}, "increase strictly"),
        ({"variant": "nested", "periods": (4, 6)}, "divide the next"),
        ({"retention": 1.0}, "retention must be in"),
        ({"retention": 0.1, "variant": "nested", "periods": (4, 8)}, "set retention=0"),
        ({"retention": 0.1, "mode": "static"}, "set retention=0"),
        ({"variant": "stacked"}, "variant"),
        ({"lr": 0.0}, "learn_lr=false"),
        ({"lr": (0.1, 0.1)}, "one or 3"),
        ({"mode": "outer", "outer_every": (1, 2)}, "3 positive"),
        ({"outer_every": (1, 2, 4)}, "only applies to cms.mode='outer'"),
        ({"mode": "outer", "objective": "ntp"}, "set cms.mode=in_context"),
        ({"mode": "static", "objective": "ntp"}, "set cms.mode=in_context"),
        ({"enabled": False, "objective": "ntp"}, "no effect with cms.enabled=false"),
    ],
)
def test_config_errors_name_the_fix(over, match):
    with pytest.raises(ValueError, match=match):
        CMSConfig(**over)
    with pytest.raises(ValueError, match="unknown cms options"):
        CMSConfig.from_dict({"period": (1, 2)})


# ----------------------------------------------------------------------------- in a model
@pytest.fixture(autouse=True)
def _float64_rmsnorm(monkeypatch):
    """The shared RMSNorm and RoPE always compute in float32; float64 equivalence checks and
    finite differences need float64 throughout, so these tests patch both to the input dtype."""
    from nestlearn.layers.norm import RMSNorm

    def forward(self, x):
        xf = x if x.dtype == F64 else x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(xf.dtype)).to(x.dtype)

    monkeypatch.setattr(RMSNorm, "forward", forward)
    import nestlearn.layers.attention as attention

    rope32 = attention.apply_rope

    def rope(x, cos, sin, interleaved=False):  # same rotation, kept in float64
        if x.dtype != F64 or interleaved:
            return rope32(x, cos, sin, interleaved)
        c, s = cos.to(F64)[None, :, None, :], sin.to(F64)[None, :, None, :]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)

    monkeypatch.setattr(attention, "apply_rope", rope)


def _lm(n_layers: int = 2, dtype: torch.dtype = F64, **cms) -> LanguageModel:
    """A Hope-Attention-shaped LM: attention + CMS blocks on the shared skeleton."""
    cfg = ModelConfig(vocab_size=32, dim=16, n_layers=n_layers, n_heads=2, init_std=0.2)
    over = dict(periods=(2, 4), hidden_mult=1.0, lr=0.05, lr_max=1.0)
    over.update(cms)
    with torch.device("meta"):
        blocks = [Block(16, CausalSelfAttention(16, 2), ContinuumMemory(16, CMSConfig(**over)), 1e-6)
                  for _ in range(n_layers)]  # fmt: skip
        model = LanguageModel(cfg, blocks)
    model = model.to_empty(device="cpu")
    model.init_weights(seed=0)
    return model.to(dtype)


def test_meta_built_model_initialises_and_decodes_like_one_call():
    model = _lm()
    cms = model.blocks[0].ffn
    torch.testing.assert_close(cms.lrs(), torch.full((2,), 0.05, dtype=F64))
    idx = torch.randint(0, 32, (2, 19))
    logits, _ = model(idx)
    loss0 = F.cross_entropy(logits.flatten(0, 1), idx.flatten())
    assert abs(loss0.item() - math.log(32)) < 0.5
    full, _ = model(idx, state=model.init_state(2))
    _close(full, logits)
    out, st = model(idx[:, :7], state=model.init_state(2))
    outs = [out]
    for t in range(7, 19):
        out, st = model(idx[:, t : t + 1], state=st)
        outs.append(out)
    _close(torch.cat(outs, 1), logits, 1e-9)


@pytest.mark.parametrize("over", [{}, {"variant": "nested", "meta_grad": "full"}])
def test_lm_with_in_context_cms_trains(over):
    """The outer loop learns through the in-context levels: the loss of a batch falls."""
    torch.manual_seed(0)
    model = _lm(dtype=torch.float32, lr=0.02, **over)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 32, (4, 24))
    lr0 = model.blocks[0].ffn.lrs().detach().clone()
    losses = []
    for _ in range(30):
        logits, _ = model(idx[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0], losses
    assert not torch.equal(model.blocks[0].ffn.lrs(), lr0)  # the inner rates are trained too


def test_ntp_driver_with_lr_zero_is_the_plain_model():
    model = _lm(objective="ntp", lr=0.0, learn_lr=False)
    idx = torch.randint(0, 32, (2, 13))
    out = ntp_forward(model, idx)
    logits, _ = model(idx)
    _close(out.logits, logits)
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())
    _close(out.loss, ref)


def test_ntp_driver_first_update_is_the_true_next_token_gradient():
    """Delta after the first chunk == -eta * d(sum of the chunk's NTP losses)/dW at W_0."""
    model = _lm(n_layers=1, objective="ntp", periods=(4,), lr=0.5, learn_lr=False)
    idx = torch.randint(0, 32, (2, 9))
    out = ntp_forward(model, idx[:, :8], idx[:, 1:9])
    delta = out.state.layers[0][1].levels[0].delta  # weights used by tokens 4..7
    lvl = model.blocks[0].ffn.levels[0]
    for b in range(2):  # per-sequence fast weights: one sequence at a time
        logits, _ = model(idx[b : b + 1, :4])
        loss = F.cross_entropy(logits[0], idx[b, 1:5], reduction="sum")
        g_gate, g_up, g_down = torch.autograd.grad(
            loss, [lvl.w_gate.weight, lvl.w_up.weight, lvl.w_down.weight]
        )
        eta = 0.5 / 4
        _close(delta[0][b], -eta * torch.cat([g_gate, g_up]), 1e-12)
        _close(delta[1][b], -eta * g_down, 1e-12)


def test_ntp_driver_segments_equal_one_call_fwd_bwd():
    model = _lm(objective="ntp", meta_grad="full")
    idx = torch.randint(0, 32, (2, 12))
    tgt = torch.randint(0, 32, (2, 12))
    params = list(model.parameters())

    def run(cuts: list[int]) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        st, logits, total, prev = None, [], 0, 0
        for c in cuts:
            out = ntp_forward(model, idx[:, prev:c], tgt[:, prev:c], state=st)
            logits.append(out.logits)
            total = total + out.loss * (c - prev) * 2
            st, prev = out.state, c
        return torch.cat(logits, 1), total, torch.autograd.grad(total, params)

    one = run([12])
    for cuts in ([7, 12], list(range(1, 13))):
        other = run(cuts)
        _close(other[0], one[0])
        _close(other[1], one[1])
        for a, b in zip(other[2], one[2]):
            _close(a, b, 1e-9)


@pytest.mark.parametrize("which", ["lr", "init"])
def test_ntp_driver_meta_gradient_matches_finite_differences(which):
    """Backprop through the unrolled updates (create_graph) is the exact meta-gradient."""
    model = _lm(objective="ntp", meta_grad="full", lr=0.08)
    idx = torch.randint(0, 32, (1, 10))
    cms = model.blocks[0].ffn
    p, i = (cms.lr_logit, (0,)) if which == "lr" else (cms.levels[0].w_gate.weight, (1, 3))
    loss = ntp_forward(model, idx).loss
    (g,) = torch.autograd.grad(loss, [p])
    eps = 1e-6
    with torch.no_grad():
        p[i] += eps
        up = ntp_forward(model, idx).loss
        p[i] -= 2 * eps
        down = ntp_forward(model, idx).loss
        p[i] += eps
    fd = (up - down) / (2 * eps)
    assert abs(g[i].item() - fd.item()) <= 1e-6 * max(1.0, abs(fd.item())), (g[i].item(), fd.item())
    assert abs(fd.item()) > 1e-6  # the learning rate / init really matters


def _outer_run(steps: int, every: tuple[int, ...], model=None, opt=None):
    model = model or _lm(n_layers=1, dtype=torch.float32, mode="outer", periods=(1, 2, 3),
                         outer_every=every)  # fmt: skip
    opt = opt or torch.optim.AdamW(model.parameters(), lr=1e-2)
    handle = attach_outer_schedule(model, opt)
    gen = torch.Generator().manual_seed(1)
    snaps = []
    for _ in range(steps):
        idx = torch.randint(0, 32, (2, 9), generator=gen)
        logits, _ = model(idx)
        F.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        snaps.append(
            [[p.detach().clone() for p in lvl.parameters()] for lvl in model.blocks[0].ffn.levels]
        )
    handle.remove()
    return model, opt, snaps


def test_outer_schedule_updates_each_level_every_k_steps():
    every = (1, 2, 3)
    model, _, snaps = _outer_run(7, every)
    assert model.blocks[0].ffn.init_state(1, None, None) is None
    for step in range(1, 7):
        for lvl, k in enumerate(every):
            changed = any(
                not torch.equal(a, b) for a, b in zip(snaps[step][lvl], snaps[step - 1][lvl])
            )
            assert changed == ((step + 1) % k == 0), (step + 1, lvl)


def test_outer_schedule_hands_the_summed_gradient_and_resumes_exactly():
    model = _lm(n_layers=1, dtype=torch.float32, mode="outer", periods=(1, 2), outer_every=(1, 3))
    lvl = model.blocks[0].ffn.levels[1]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    attach_outer_schedule(model, opt)
    w0 = lvl.w_down.weight.detach().clone()
    grads = []
    for _ in range(3):
        idx = torch.randint(0, 32, (2, 9))
        logits, _ = model(idx)
        F.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
        grads.append(lvl.w_down.weight.grad.clone())
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.testing.assert_close(lvl.w_down.weight, w0 - 0.1 * sum(grads))
    # exact resume mid-window: the accumulators are persistent buffers of the model
    full, _, snaps = _outer_run(5, (1, 2, 3))
    half, opt_h, _ = _outer_run(3, (1, 2, 3))
    again = _lm(
        n_layers=1, dtype=torch.float32, mode="outer", periods=(1, 2, 3), outer_every=(1, 2, 3)
    )
    again.load_state_dict(half.state_dict())
    opt_a = torch.optim.AdamW(again.parameters(), lr=1e-2)
    opt_a.load_state_dict(opt_h.state_dict())
    gen_skip = torch.Generator().manual_seed(1)
    for _ in range(3):  # the batches the first part consumed
        torch.randint(0, 32, (2, 9), generator=gen_skip)
    handle = attach_outer_schedule(again, opt_a)
    for _ in range(2):
        idx = torch.randint(0, 32, (2, 9), generator=gen_skip)
        logits, _ = again(idx)
        F.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
        opt_a.step()
        opt_a.zero_grad(set_to_none=True)
    handle.remove()
    for a, b in zip(again.state_dict().values(), full.state_dict().values()):
        assert torch.equal(a, b)


def test_in_context_rates_scale_with_width_unless_given():
    from nestlearn.models import build_model, preset_config

    cfg = CMSConfig.for_dim({}, 256)
    assert cfg.lr == (0.064 / 256,) * len(cfg.periods) and cfg.lr_max == pytest.approx(
        4 * 0.064 / 256
    )
    assert CMSConfig.for_dim({"lr": 0.002}, 256).lr[0] == 0.002  # explicit rate kept
    assert CMSConfig.for_dim({"lr": 0.002}, 256).lr_max == 0.01
    for name in ("hope-tiny", "hope-attention-tiny"):
        m = build_model(preset_config(name, vocab_size=64))
        lrs = m.blocks[0].ffn.lrs().detach()
        assert torch.allclose(lrs, torch.full_like(lrs, 0.064 / m.cfg.dim))
