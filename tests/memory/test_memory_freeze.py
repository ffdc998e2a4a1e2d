"""The freeze protocol: frozen memories read their current weights and write nothing.

float64 throughout, so equalities check logic, not rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import nestlearn.memory.neural_memory as nm
from nestlearn.memory.cms import CMSConfig, ContinuumMemory
from nestlearn.memory.neural_memory import NeuralMemory
from nestlearn.models import (
    ModelConfig,
    ModelState,
    build_model,
    frozen_memory,
    set_memory_frozen,
)
from nestlearn.ops.titans import TitansState, chunk_titans
from nestlearn.ops.titans.common import read_weights

F64 = torch.float64
D, H, C = 32, 2, 8
VARIANTS = {
    "mlp-gd": {"memory": "mlp"},
    "mlp3-dgd": {"memory": "mlp", "depth": 3, "optimizer": "dgd", "activation": "gelu"},
    "linear-nomom": {"memory": "linear", "momentum": False},
}


def _memory(variant: str) -> NeuralMemory:
    torch.manual_seed(0)
    m = NeuralMemory(D, H, chunk_size=C, max_lr=0.1, **VARIANTS[variant]).double()
    with torch.no_grad():
        m.wgates.weight.normal_(0.0, 0.3)
    return m


def _x(T: int, seed: int) -> torch.Tensor:
    return torch.randn(2, T, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _same(a: tuple[torch.Tensor, ...] | None, b: tuple[torch.Tensor, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_frozen_neural_memory_keeps_its_state_and_reads_it(variant, monkeypatch):
    m = _memory(variant)
    _, warm = m(_x(13, 1), state=m.init_state(2, "cpu", F64))  # mid-chunk (13 = 8 + 5)
    inner = warm.inner
    assert inner.offset == 5 and inner.anchor is not None
    if inner.momentum is not None:
        assert max(s.abs().max().item() for s in inner.momentum) > 0
    x = _x(10, 2)
    set_memory_frozen(m, True)
    y_frozen, st = m(x, state=warm)
    # the memory part of the state comes back untouched: weights, momentum, anchor, offset
    assert _same(st.inner.weights, inner.weights) and _same(st.inner.momentum, inner.momentum)
    assert _same(st.inner.anchor, inner.anchor) and st.inner.offset == inner.offset
    # the frozen read is the op's read with theta = 0, no forgetting and no momentum term, from
    # the weights a read sees (mid-chunk, hidden_chunk reads the hidden layers at the anchor)
    seen = {}

    def zero_lr_op(q, k, v, theta, eta, alpha, state, **kw):
        start = TitansState(read_weights(state, m.hidden_chunk))
        y, out = chunk_titans(q, k, v, torch.zeros_like(theta), None, None, start, **kw)
        seen["kept"] = _same(out.weights, start.weights)
        return y, out

    monkeypatch.setattr(nm, "chunk_titans", zero_lr_op)
    set_memory_frozen(m, False)
    y_zero_lr, st_zero = m(x, state=warm)
    assert seen["kept"]  # zero theta and alpha=None keep the weights exactly
    assert_close(y_frozen, y_zero_lr, rtol=1e-12, atol=1e-12)
    assert torch.equal(st.conv, st_zero.conv)  # the conv tail (an input record) still advances
    monkeypatch.undo()
    # unfrozen, the same call writes: the weights move
    _, st_live = m(x, state=warm)
    assert not _same(st_live.inner.weights, inner.weights)


def test_zero_lr_alone_does_not_stop_momentum():
    """Why the frozen path bypasses the op: with S != 0, W_t = W_{t-1} + eta_t S_{t-1}."""
    g = torch.Generator().manual_seed(0)
    B, T, Hh, F = 1, 6, 2, 4
    q, k, v = (torch.randn(B, T, Hh, F, generator=g, dtype=F64) for _ in range(3))
    W = (torch.randn(B, Hh, F, F, generator=g, dtype=F64),)
    S = (torch.randn(B, Hh, F, F, generator=g, dtype=F64),)
    theta, eta = torch.zeros(B, T, Hh, dtype=F64), torch.full((B, T, Hh), 0.9, dtype=F64)
    _, moved = chunk_titans(q, k, v, theta, eta, None, TitansState(W, S), chunk_size=4)
    assert not torch.equal(moved.weights[0], W[0])
    _, kept = chunk_titans(q, k, v, theta, None, None, TitansState(W), chunk_size=4)
    assert torch.equal(kept.weights[0], W[0])


def _levels(state) -> list[torch.Tensor]:
    out = []
    for lv in state.levels:
        for name in ("delta", "grad", "pending"):
            val = getattr(lv, name)
            out += list(val) if isinstance(val, tuple) else ([val] if val is not None else [])
    return out


def test_frozen_cms_keeps_its_levels():
    torch.manual_seed(0)
    cfg = CMSConfig(periods=(2, 4), hidden_mult=1.0, lr=0.05, lr_max=1.0)
    model = nn.ModuleList([ContinuumMemory(16, cfg)]).double()
    cms = model[0]
    x = torch.randn(2, 11, 16, dtype=F64)
    _, warm = cms(x, state=cms.init_state(2, "cpu", F64))
    assert len(_levels(warm)) > 0
    assert set_memory_frozen(model, True) == 1 and cms.frozen and cms.memory_frozen
    y1, st = cms(torch.randn(2, 9, 16, dtype=F64), state=warm)
    before = [lv.delta for lv in warm.levels]
    assert all(_same(a, b.delta) for a, b in zip(before, st.levels, strict=True))
    set_memory_frozen(model, False)
    _, st_live = cms(torch.randn(2, 9, 16, dtype=F64), state=warm)
    assert not all(_same(a, b.delta) for a, b in zip(before, st_live.levels, strict=True))


def test_helper_counts_and_context_manager_restores():
    model = build_model(ModelConfig(family="titans", vocab_size=50, dim=32, n_layers=3, n_heads=2))
    mems = [b.mixer for b in model.blocks]
    mems[1].set_memory_frozen(True)  # one already frozen: the context manager must restore it
    with frozen_memory(model) as n:
        assert n == 3 and all(m.memory_frozen for m in mems)
    assert [m.memory_frozen for m in mems] == [False, True, False]
    with frozen_memory(model, False):
        assert not any(m.memory_frozen for m in mems)
    assert [m.memory_frozen for m in mems] == [False, True, False]
    plain = build_model(ModelConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2))
    assert set_memory_frozen(plain, True) == 0  # no in-context memory: nothing to switch


def test_frozen_titans_lm_reads_the_memory_it_learned():
    torch.manual_seed(0)
    cfg = ModelConfig(family="titans", vocab_size=50, dim=32, n_layers=2, n_heads=2,
                      mixer={"chunk_size": 8, "max_lr": 0.1})  # fmt: skip
    model = build_model(cfg).double()
    ctx, probe = torch.randint(0, 50, (1, 40)), torch.randint(0, 50, (1, 12))
    _, warm = model(ctx, return_state=True)
    with frozen_memory(model):
        y_warm, st = model(probe, state=warm)
        # same conv tails, memories back at M_0: only the memory weights differ
        blank = ModelState([(m._replace(inner=None), f) for m, f in warm.layers], warm.position)
        y_fresh, _ = model(probe, state=blank)
    assert st.position == 52
    for (m0, _), (m1, _) in zip(warm.layers, st.layers, strict=True):
        assert _same(m1.inner.weights, m0.inner.weights) and not torch.equal(m1.conv, m0.conv)
    # reads use the learned memory: the same probe reads differently after the context
    assert (y_warm - y_fresh).abs().max() > 1e-3


def test_zero_shot_hook_switches_protocol_modules():
    """``eval --tasks --freeze-memory`` goes through ``set_memory_updates``, which honours it."""
    from nestlearn.eval.zeroshot import set_memory_updates

    model = build_model(ModelConfig(family="titans", vocab_size=50, dim=32, n_layers=2, n_heads=2))
    assert set_memory_updates(model, False)
    assert all(b.mixer.memory_frozen for b in model.blocks)
    assert set_memory_updates(model, True) and not model.blocks[0].mixer.memory_frozen


def test_the_cms_forms_switch_only_the_cms() -> None:
    """``set_cms_frozen`` / ``frozen_cms`` are ``set_memory_frozen(..., only=ContinuumMemory)``:
    a Hope model's self-modifying Titans keep learning, and the context form restores."""
    from nestlearn.memory.cms import frozen_cms, set_cms_frozen
    from nestlearn.memory.self_modifying import SelfModifyingTitans

    cfg = ModelConfig(family="hope", vocab_size=32, dim=16, n_layers=2, n_heads=2, max_seq_len=32)
    model = build_model(cfg)
    cms = [m for m in model.modules() if isinstance(m, ContinuumMemory)]
    titans = [m for m in model.modules() if isinstance(m, SelfModifyingTitans)]
    set_cms_frozen(model, True)
    assert all(m.frozen for m in cms) and not any(m.memory_frozen for m in titans)
    set_cms_frozen(model, False)
    with frozen_cms(model):
        assert all(m.frozen for m in cms) and not any(m.memory_frozen for m in titans)
    assert not any(m.frozen for m in cms)
    with frozen_memory(model) as n:
        assert n == len(cms) + len(titans) and all(m.memory_frozen for m in cms + titans)
    assert not any(m.memory_frozen for m in cms + titans)
