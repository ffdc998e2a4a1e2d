"""SelfModifyingTitans (Hope's mixer): state, isolation, decode, frozen reads, ablation switches.

float64 so the tolerances check logic, not rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import nestlearn.memory.self_modifying as sm_mod
from nestlearn.memory.self_modifying import SelfModifyingTitans, SelfModifyingTitansState
from nestlearn.ops.selfmod import chunk_selfmod_titans

TOL = {"rtol": 1e-9, "atol": 1e-10}
D, H, T = 32, 2, 29


def make(**kw) -> SelfModifyingTitans:
    torch.manual_seed(0)
    args = {"chunk_size": 8, "proj_chunk_size": 4, "max_lr": 0.1, **kw}
    m = SelfModifyingTitans(D, H, **args).double()
    with torch.no_grad():  # non-zero readouts so eta / alpha vary per token
        m.eta_readout.normal_(0.0, 0.5)
        if m.alpha_readout is not None:
            m.alpha_readout.normal_(0.0, 0.5)
    return m


def inputs(B: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, D, generator=g, dtype=torch.float64)


def flat(st: SelfModifyingTitansState) -> list[torch.Tensor]:
    assert st.inner is not None
    out = []
    for sub in st.inner:
        out += list(sub.weights) + list(sub.momentum or ()) + list(sub.anchor or ())
    return out + ([st.conv] if st.conv is not None else [])


def test_sequences_in_a_batch_are_independent() -> None:
    m = make()
    x = inputs()
    y, _ = m(x)
    x2 = x.clone()
    x2[1] += torch.randn_like(x2[1])
    y2, _ = m(x2)
    assert torch.equal(y[0], y2[0]) and torch.equal(y[2], y2[2])
    assert not torch.allclose(y[1], y2[1])


def test_causal() -> None:
    m = make()
    x = inputs()
    y, _ = m(x)
    x2 = x.clone()
    x2[:, 17:] += 1.0
    y2, _ = m(x2)
    assert torch.equal(y[:, :17], y2[:, :17])
    assert not torch.allclose(y[:, 17:], y2[:, 17:])


@pytest.mark.parametrize("cuts", [[5, 13, 21], [8, 16], [1, 2, 3, 11]], ids=str)
def test_one_call_equals_segments(cuts: list[int]) -> None:
    m = make()
    x = inputs()
    y_full, st_full = m(x, state=m.init_state(3, x.device, x.dtype))
    st, ys = m.init_state(3, x.device, x.dtype), []
    for a, b in zip([0, *cuts], [*cuts, T]):
        y, st = m(x[:, a:b], state=st)
        ys.append(y)
    assert_close(torch.cat(ys, 1), y_full, **TOL)
    for a, b in zip(flat(st), flat(st_full), strict=True):
        assert_close(a, b, **TOL)


def test_prefill_then_decode_equals_one_call_with_constant_state_size() -> None:
    m = make()
    x = inputs(B=2)
    y_full, _ = m(x)
    y, st = m(x[:, :9], state=m.init_state(2, x.device, x.dtype))
    ys, sizes = [y], set()
    for t in range(9, T):
        y, st = m(x[:, t : t + 1], state=st)
        ys.append(y)
        sizes.add(sum(t.numel() for t in flat(st)))
    assert_close(torch.cat(ys, 1), y_full, **TOL)
    # with / without each memory group's chunk anchor: O(1) memory, not O(context)
    assert len(sizes) <= 4


def test_naive_module_matches_and_gradients_reach_initial_memories() -> None:
    fast, slow = make(), make(naive=True)
    x = inputs(B=2)
    y1, _ = fast(x)
    y2, _ = slow(x)
    assert_close(y1, y2, **TOL)
    g1 = torch.autograd.grad(y1.pow(2).sum(), list(fast.parameters()))
    g2 = torch.autograd.grad(y2.pow(2).sum(), list(slow.parameters()))
    for (name, _), a, b in zip(fast.named_parameters(), g1, g2, strict=True):
        assert_close(a, b, **TOL, msg=name)
    named = dict(zip([n for n, _ in fast.named_parameters()], g1))
    for key in ("proj_init.0", "proj_init.1", "mem_init.0", "mem_init.1", "eta_readout"):
        assert named[key].abs().max() > 0, key


def test_frozen_reads_without_writing() -> None:
    m = make()
    x = inputs(B=2)
    _, st = m(x[:, :12], state=m.init_state(2, x.device, x.dtype))
    m.set_memory_frozen(True)
    y_frozen, st2 = m(x[:, 12:], state=st)
    m.set_memory_frozen(False)
    assert st.inner is st2.inner  # no write happened
    y_live, st3 = m(x[:, 12:], state=st)
    assert not torch.allclose(y_frozen[:, 1:], y_live[:, 1:])
    # the first token of the continuation reads the same memory either way (read before write)
    # only when the projection memories sit on a chunk boundary (12 = 3 * 4): check it
    assert_close(y_frozen[:, 0], y_live[:, 0], **TOL)
    assert any(not torch.equal(a, b) for a, b in zip(flat(st), flat(st3)))


# ---------------------------------------------------------------- Table 6 ablation switches
ABLATIONS = {
    "w/o DGD": ({"optimizer": "gd"}, {"optimizer": "gd"}),
    "w/o momentum": ({"momentum": False}, {"momentum": None}),
    "w/o weight decay": (
        {"weight_decay": False},
        {"names": ("k", "v", "eta"), "alpha_readout": None},
    ),
    "fixed k": ({"adaptive_k": False}, {"names": ("v", "eta", "alpha"), "k": "tensor"}),
    "fixed v": ({"adaptive_v": False}, {"names": ("k", "eta", "alpha"), "v": "tensor"}),
    "adaptive q": ({"adaptive_q": True}, {"names": ("k", "v", "q", "eta", "alpha"), "q": None}),
}


def _summary(v: object) -> object:
    if isinstance(v, torch.Tensor):
        return "tensor"
    if isinstance(v, tuple) and v and isinstance(v[0], torch.Tensor):
        return "readout"
    if isinstance(v, tuple) and v and isinstance(v[0], tuple):
        return "prior"
    return v


def _capture(monkeypatch: pytest.MonkeyPatch, m: SelfModifyingTitans, x: torch.Tensor) -> dict:
    seen: dict = {}
    real = chunk_selfmod_titans

    def spy(xm, state, **kw):  # noqa: ANN001, ANN202
        seen.update({k: _summary(v) for k, v in kw.items()})
        seen["proj_heads"] = state.proj.weights[0].shape[1]
        return real(xm, state, **kw)

    monkeypatch.setattr(sm_mod, "chunk_selfmod_titans", spy)
    m(x)
    return seen


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_each_ablation_changes_only_what_it_names(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    switch, expected = ABLATIONS[name]
    x = inputs(B=2)
    base, abl = make(), make(**switch)
    seen_base, seen_abl = _capture(monkeypatch, base, x), _capture(monkeypatch, abl, x)
    changed = {k for k in seen_base if seen_base[k] != seen_abl.get(k)}
    expect = set(expected) | ({"proj_heads"} if "names" in expected else set())
    assert changed == expect, (name, changed)
    for k, v in expected.items():
        assert seen_abl[k] == v, (name, k)
    # parameters: only those of the named mechanism differ
    pb = {n: p.shape for n, p in base.named_parameters()}
    pa = {n: p.shape for n, p in abl.named_parameters()}
    diff = {n for n in pb.keys() | pa.keys() if pb.get(n) != pa.get(n)}
    allowed = {
        "w/o DGD": set(),
        "w/o momentum": {"w_mom.weight", "mom_bias"},
        # per-memory conv (the default): one conv group per projection memory and per fixed
        # projection, so dropping M_alpha drops a group, while trading a memory for a fixed
        # projection (or the reverse) keeps the count
        "w/o weight decay": {
            "alpha_readout", "alpha_bias", "proj_init.0", "proj_init.1", "conv_weight",
        },
        "fixed k": {"w_in.weight", "proj_init.0", "proj_init.1"},
        "fixed v": {"w_in.weight", "proj_init.0", "proj_init.1"},
        "adaptive q": {"w_in.weight", "proj_init.0", "proj_init.1"},
    }[name]  # fmt: skip
    assert diff == allowed, (name, diff)
    # and the switch does change the output
    assert not torch.allclose(base(x)[0], abl(x)[0])


def test_bad_config_names_the_fix() -> None:
    with pytest.raises(ValueError, match="divisible"):
        SelfModifyingTitans(30, 4)
    with pytest.raises(ValueError, match="try 32 and 64"):
        SelfModifyingTitans(32, 2, proj_chunk_size=0)
    with pytest.raises(ValueError, match="max_lr"):
        SelfModifyingTitans(32, 2, max_lr=0.0)
    with pytest.raises(ValueError, match="optimizer"):
        SelfModifyingTitans(32, 2, optimizer="adam")  # type: ignore[arg-type]
