"""Chunk-group recompute (``recompute_group``) changes memory, never numbers.

For the Titans op (every memory path: linear, linear exact, MLP with the strong-write options,
reads before / after, self-targets, update-only, a state that starts mid-chunk), the
self-modifying op and the CMS level op (every variant): outputs, final states and the gradients
of every input (initial state included) equal the non-recomputed path to 1e-6 in float32. Plus:
the groups are really checkpointed (one per ``G`` chunks) while a gradient is recorded, and not
at all under ``no_grad`` / ``inference_mode``.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import nestlearn.ops.recompute as recompute_mod
from nestlearn.ops.cms import CMSLevelState, chunk_cms_level
from nestlearn.ops.recompute import check_recompute_group
from nestlearn.ops.selfmod import SelfModState, chunk_selfmod_titans
from nestlearn.ops.titans import TitansState, chunk_titans

TOL = {"rtol": 1e-6, "atol": 1e-6}
B, H, D = 2, 2, 8


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    return []


def _fwd_bwd(fn, leaves: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run ``fn()``; return its output tensors and the gradients of a random scalar of them."""
    out = _tensors(fn())
    g = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=g)).sum() for t in out if t.requires_grad)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [t.detach() for t in out], list(grads)


def _assert_same(a, b) -> None:
    (ya, ga), (yb, gb) = a, b
    assert len(ya) == len(yb)
    for x, y in zip(ya, yb, strict=True):
        assert_close(x, y, **TOL)
    for x, y in zip(ga, gb, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            assert_close(x, y, **TOL)


class _CountCheckpoints:
    """Counts the checkpointed groups ``run_grouped`` starts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = recompute_mod.checkpoint

        def counting(*a, **k):
            self.calls += 1
            return real(*a, **k)

        monkeypatch.setattr(recompute_mod, "checkpoint", counting)


# ------------------------------------------------------------------------------------ Titans
def _titans_inputs(T: int, memory: str, momentum: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def rn(*s: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*s, generator=g) * scale).requires_grad_()

    def unit(*s: int) -> torch.Tensor:
        x = torch.randn(*s, generator=g)
        return (x / x.norm(dim=-1, keepdim=True)).requires_grad_()

    def gate(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(B, T, H, generator=g)).requires_grad_()

    shapes = {"linear": [(D, D)], "mlp2": [(2 * D, D), (D, 2 * D)],
              "mlp3": [(2 * D, D), (2 * D, 2 * D), (D, 2 * D)]}[memory]  # fmt: skip
    w = tuple(rn(B, H, o, i, scale=0.4) for o, i in shapes)
    s = tuple(rn(B, H, o, i, scale=0.1) for o, i in shapes) if momentum else None
    return {
        "q": unit(B, T, H, D), "k": unit(B, T, H, D), "v": rn(B, T, H, D),
        "theta": gate(0.01, 0.05), "eta": gate(0.2, 0.9) if momentum else None,
        "alpha": gate(0.0, 0.2), "initial_state": TitansState(w, s),
    }  # fmt: skip


def _titans_leaves(inp: dict) -> list[torch.Tensor]:
    st = inp["initial_state"]
    named = [inp[n] for n in ("q", "k", "v", "theta", "eta", "alpha") if inp.get(n) is not None]
    return named + list(st.weights) + list(st.momentum or ()) + list(st.anchor or ())


CASES = {
    "linear": ("linear", {}),
    "linear-exact": ("linear", {"exact_output": True}),
    "linear-dgd-before": ("linear", {"optimizer": "dgd", "read": "before"}),
    "mlp2": ("mlp2", {}),
    "mlp2-dgd-self": ("mlp2", {"optimizer": "dgd", "self_target": True, "read": "before"}),
    "mlp2-strong": ("mlp2", {"exact_output": True, "hidden_chunk": True}),
    "mlp3-strong-prior": ("mlp3", {"exact_output": True, "hidden_chunk": True, "prior": True}),
    "mlp2-hope-main": ("mlp2", {"exact_output": True, "hidden_chunk": True, "prior": True,
                                "optimizer": "dgd", "self_target": True, "read": "before"}),
}  # fmt: skip


def _titans_call(inp: dict, kw: dict, group: int | None):
    kw = dict(kw)
    if kw.pop("prior", False):
        kw["hidden_prior"] = inp["initial_state"].weights
    return chunk_titans(**inp, **kw, recompute_group=group)


@pytest.mark.parametrize("group", [1, 2, 3])
@pytest.mark.parametrize("momentum", [False, True], ids=["nomom", "mom"])
@pytest.mark.parametrize("case", list(CASES))
def test_titans_recompute_equals_plain(case: str, momentum: bool, group: int) -> None:
    memory, kw = CASES[case]
    inp = _titans_inputs(37, memory, momentum)  # 37 tokens: 5 chunks of 8, the last one short
    kw = {"chunk_size": 8, **kw}
    leaves = _titans_leaves(inp)
    ref = _fwd_bwd(lambda: _titans_call(inp, kw, None), leaves)
    _assert_same(_fwd_bwd(lambda: _titans_call(inp, kw, group), leaves), ref)


@pytest.mark.parametrize("case", ["linear", "linear-exact", "mlp2-hope-main"])
def test_titans_recompute_mid_chunk_state_and_update_only(case: str) -> None:
    """A call that starts mid-chunk (anchor) and one without reads (``q=None``)."""
    memory, kw = CASES[case]
    inp = _titans_inputs(45, memory, True, seed=3)
    kw = {"chunk_size": 8, **kw}
    first = {**inp, "q": inp["q"][:, :13], "k": inp["k"][:, :13], "v": inp["v"][:, :13],
             **{n: inp[n][:, :13] for n in ("theta", "eta", "alpha")}}  # fmt: skip
    rest = {n: (t[:, 13:] if torch.is_tensor(t) else t) for n, t in inp.items()}
    leaves = _titans_leaves(inp)

    def two_calls(group: int | None):
        _, st = _titans_call(first, kw, group)
        assert st.offset == 5 and st.anchor is not None
        y, st2 = _titans_call({**rest, "initial_state": st}, kw, group)
        _, st3 = _titans_call({**rest, "q": None, "initial_state": st}, kw, group)
        return y, st2, st3

    _assert_same(_fwd_bwd(lambda: two_calls(2), leaves), _fwd_bwd(lambda: two_calls(None), leaves))


def test_titans_groups_are_checkpointed_only_with_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    count = _CountCheckpoints(monkeypatch)
    memory, kw = CASES["mlp2-strong"]
    inp = _titans_inputs(37, memory, True)
    chunk_titans(**inp, **kw, chunk_size=8, recompute_group=2)
    assert count.calls == 3  # 5 chunks in groups of 2
    with torch.no_grad():
        chunk_titans(**inp, **kw, chunk_size=8, recompute_group=2)
    with torch.inference_mode():
        chunk_titans(**inp, **kw, chunk_size=8, recompute_group=2)
    frozen = {n: (t.detach() if torch.is_tensor(t) else t) for n, t in inp.items()}
    frozen["initial_state"] = inp["initial_state"].detach()
    chunk_titans(**frozen, **kw, chunk_size=8, recompute_group=2)  # nothing needs a gradient
    assert count.calls == 3


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8"])
def test_bad_recompute_group_names_the_fix(bad) -> None:
    with pytest.raises(ValueError, match="try 8"):
        check_recompute_group(bad)
    memory, kw = CASES["mlp2"]
    with pytest.raises(ValueError, match="recompute_group"):
        chunk_titans(**_titans_inputs(9, memory, False), chunk_size=4, recompute_group=bad)


# ------------------------------------------------------------------------- self-modifying
def _selfmod_inputs(T: int, names: tuple[str, ...], momentum: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    F_, HID = 4, 6

    def rn(*s: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*s, generator=g) * scale).requires_grad_()

    def mem(heads: int) -> TitansState:
        w = (rn(B, heads, HID, F_, scale=0.5), rn(B, heads, F_, HID, scale=0.4))
        m = tuple(rn(*t.shape, scale=0.05) for t in w) if momentum else None
        return TitansState(w, m)

    n = len(names)
    inp = {
        "x": rn(B, T, H, F_, scale=0.5), "state": SelfModState(mem(n * H), mem(H)),
        "names": names, "eta_readout": (rn(H, F_, scale=0.5), rn(H)),
        "alpha_readout": (rn(H, F_, scale=0.5), rn(H, scale=0.1) - 2.0)
        if "alpha" in names else None,
        "momentum": (0.2 + 0.7 * torch.rand(B, T, H, generator=g)).requires_grad_()
        if momentum else None,
        "max_lr": 0.3,
    }  # fmt: skip
    for name in ("q", "k", "v"):
        inp[name] = None if name in names else rn(B, T, H, F_)
    return inp


def _selfmod_leaves(inp: dict) -> list[torch.Tensor]:
    out = [inp["x"], *inp["eta_readout"], *(inp["alpha_readout"] or ())]
    out += [inp[n] for n in ("q", "k", "v", "momentum") if inp[n] is not None]
    for st in inp["state"]:
        out += list(st.weights) + list(st.momentum or ()) + list(st.anchor or ())
    return out


@pytest.mark.parametrize("group", [1, 2, 5])
@pytest.mark.parametrize(
    "names,momentum,strong",
    [
        pytest.param(("k", "v", "eta", "alpha"), True, True, id="hope"),
        pytest.param(("k", "v", "eta", "alpha"), True, False, id="hope-chunk-start-rule"),
        pytest.param(("v", "eta"), False, True, id="fixed-k-no-decay"),
    ],
)
def test_selfmod_recompute_equals_plain(names, momentum: bool, strong: bool, group: int) -> None:
    inp = _selfmod_inputs(29, names, momentum, seed=4)
    kw = {"chunk_size": 4, "proj_chunk_size": 3, "optimizer": "dgd", "proj_lr_scale": 0.5}
    if strong:
        st = inp["state"]
        kw |= {"exact_output": True, "hidden_chunk": True,
               "hidden_prior": (st.proj.weights, st.memory.weights)}  # fmt: skip
    leaves = _selfmod_leaves(inp)

    def run(grp: int | None):
        # two calls: the second starts mid-chunk for both memories (anchors in the state)
        first = {**inp, **{n: inp[n][:, :10] for n in ("x", "q", "k", "v", "momentum")
                           if inp[n] is not None}}  # fmt: skip
        o1, st = chunk_selfmod_titans(**first, **kw, recompute_group=grp)
        rest = {**inp, "state": st, **{n: inp[n][:, 10:] for n in ("x", "q", "k", "v", "momentum")
                                       if inp[n] is not None}}  # fmt: skip
        o2, st2 = chunk_selfmod_titans(**rest, **kw, recompute_group=grp)
        return o1, o2, st2

    _assert_same(_fwd_bwd(lambda: run(group), leaves), _fwd_bwd(lambda: run(None), leaves))


def test_selfmod_checkpoints_both_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    count = _CountCheckpoints(monkeypatch)
    inp = _selfmod_inputs(24, ("k", "v", "eta", "alpha"), True)
    chunk_selfmod_titans(**inp, chunk_size=4, proj_chunk_size=3, recompute_group=2)
    assert count.calls == 4 + 3  # 8 projection chunks, then 6 main-memory chunks, by 2
    with torch.no_grad():
        chunk_selfmod_titans(**inp, chunk_size=4, proj_chunk_size=3, recompute_group=2)
    assert count.calls == 7


# ------------------------------------------------------------------------------------- CMS
@pytest.mark.parametrize("group", [1, 2, 3])
@pytest.mark.parametrize(
    "act,first_order,reset,mid",
    [
        pytest.param("swiglu", True, None, False, id="swiglu-first-order"),
        pytest.param("swiglu", False, None, True, id="swiglu-full-mid-chunk"),
        pytest.param("swiglu", True, 8, True, id="swiglu-first-order-nested-mid-chunk"),
        pytest.param("gelu", False, 8, False, id="gelu-full-nested"),
    ],
)
def test_cms_recompute_equals_plain(act: str, first_order: bool, reset, mid: bool, group) -> None:
    g = torch.Generator().manual_seed(5)
    Bc, T, Dc, Hc, C = 2, 27, 6, 5, 4
    hin = 2 * Hc if act == "swiglu" else Hc

    def t(*s: int, scale: float = 0.3) -> torch.Tensor:
        return (torch.randn(*s, generator=g) * scale).requires_grad_()

    x, w_in, w_out = t(Bc, T, Dc, scale=1.0), t(hin, Dc), t(Dc, Hc)
    lr = torch.tensor(0.07, requires_grad=True)
    rlr = torch.tensor(0.03, requires_grad=True) if reset else None
    init = None
    if mid:
        init = CMSLevelState(
            delta=(t(Bc, hin, Dc, scale=0.1), t(Bc, Dc, Hc, scale=0.1)),
            grad=(t(Bc, hin, Dc, scale=0.1), t(Bc, Dc, Hc, scale=0.1)),
            pending=t(Bc, 2, Dc, scale=0.1),
            anchor=(t(Bc, hin, Dc, scale=0.1), t(Bc, Dc, Hc, scale=0.1)) if reset else None,
            anchor_grad=(t(Bc, hin, Dc, scale=0.1), t(Bc, Dc, Hc, scale=0.1)) if reset else None,
            position=6,
        )
    leaves = [x, w_in, w_out, lr] + ([rlr] if reset else []) + _tensors(init)
    kw = dict(period=C, activation=act, first_order=first_order, reset_period=reset,
              reset_lr=rlr, retention=0.0 if reset else 0.15)  # fmt: skip

    def run(grp: int | None, keep: bool):
        return chunk_cms_level(x, w_in, w_out, lr, init, **kw, output_final_state=keep,
                               recompute_group=grp)  # fmt: skip

    for keep in (True, False):
        _assert_same(
            _fwd_bwd(lambda k=keep: run(group, k), leaves),
            _fwd_bwd(lambda k=keep: run(None, k), leaves),
        )


def test_cms_groups_are_checkpointed_only_with_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    count = _CountCheckpoints(monkeypatch)
    x = torch.randn(2, 40, 6, requires_grad=True)
    w_in, w_out = torch.randn(10, 6) * 0.3, torch.randn(6, 5) * 0.3
    chunk_cms_level(x, w_in, w_out, 0.05, period=4, recompute_group=4)
    assert count.calls == 3  # 10 chunks by 4
    with torch.inference_mode():
        chunk_cms_level(x, w_in, w_out, 0.05, period=4, recompute_group=4)
    assert count.calls == 3
