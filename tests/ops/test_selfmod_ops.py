"""Chunked self-modifying Titans vs its per-token reference, float64, forward and backward.

Contracts (``src/nestlearn/ops/selfmod``): chunk == naive for every pair of chunk sizes (the main
memory's and the projection memories'), every ablation layout of the projections, with and
without momentum / weight decay, and for a length that no chunk size divides; gradients of every
input match; threading the state through any split (and token-by-token decode) equals one call.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from nestlearn.ops.selfmod import SelfModState, chunk_selfmod_titans, naive_selfmod_titans
from nestlearn.ops.titans import TitansState

DT = torch.float64
B, H, F, HID = 2, 2, 4, 6
TOL = {"rtol": 1e-9, "atol": 1e-11}

LAYOUTS = {
    "hope": ("k", "v", "eta", "alpha"),
    "fixed_k": ("v", "eta", "alpha"),
    "fixed_v": ("k", "eta", "alpha"),
    "adaptive_q": ("k", "v", "q", "eta", "alpha"),
    "no_decay": ("k", "v", "eta"),
}


def make(T: int, names: tuple[str, ...], momentum: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def rn(*s: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*s, generator=g, dtype=DT) * scale).requires_grad_()

    n = len(names)

    def mem(heads: int) -> TitansState:
        w = (rn(B, heads, HID, F, scale=0.5), rn(B, heads, F, HID, scale=0.4))
        m = tuple(rn(*t.shape, scale=0.05) for t in w) if momentum else None
        return TitansState(w, m)

    inp = {
        "x": rn(B, T, H, F, scale=0.5),
        "state": SelfModState(mem(n * H), mem(H)),
        "names": names,
        "eta_readout": (rn(H, F, scale=0.5), rn(H)),
        "alpha_readout": (rn(H, F, scale=0.5), rn(H, scale=0.1) - 2.0)
        if "alpha" in names
        else None,
        "momentum": (0.2 + 0.7 * torch.rand(B, T, H, generator=g, dtype=DT)).requires_grad_()
        if momentum
        else None,
        "max_lr": 0.1,
    }
    for name in ("q", "k", "v"):
        inp[name] = None if name in names else rn(B, T, H, F)
    return inp


def leaves(inp: dict) -> list[torch.Tensor]:
    out = [inp["x"], *inp["eta_readout"]]
    for name in ("alpha_readout",):
        if inp[name] is not None:
            out += list(inp[name])
    out += [inp[n] for n in ("q", "k", "v", "momentum") if inp[n] is not None]
    for st in inp["state"]:
        out += list(st.weights) + list(st.momentum or ()) + list(st.anchor or ())
    return out


def loss_of(o: torch.Tensor, st: SelfModState) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=g, dtype=DT)).sum()
    for sub in st:
        for t in list(sub.weights) + list(sub.momentum or ()):
            loss = loss + (t * torch.randn(t.shape, generator=g, dtype=DT)).sum()
    return loss


def assert_state_close(a: SelfModState, b: SelfModState) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.offset == y.offset
        for u, w in zip(x.weights, y.weights, strict=True):
            assert_close(u, w, **TOL)
        for u, w in zip(x.momentum or (), y.momentum or (), strict=True):
            assert_close(u, w, **TOL)
        assert (x.anchor is None) == (y.anchor is None)
        for u, w in zip(x.anchor or (), y.anchor or (), strict=True):
            assert_close(u, w, **TOL)


def check_fwd_bwd(inp: dict, **kw) -> None:
    o_ref, st_ref = naive_selfmod_titans(**inp, **kw)
    g_ref = torch.autograd.grad(loss_of(o_ref, st_ref), leaves(inp), allow_unused=True)
    o, st = chunk_selfmod_titans(**inp, **kw)
    g = torch.autograd.grad(loss_of(o, st), leaves(inp), allow_unused=True)
    assert_close(o, o_ref, **TOL)
    assert_state_close(st, st_ref)
    for a, b in zip(g, g_ref, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, **TOL)


@pytest.mark.parametrize("sizes", [(1, 1), (4, 2), (3, 5), (8, 8)], ids=str)
@pytest.mark.parametrize("optimizer", ["gd", "dgd"])
def test_chunk_equals_naive_hope_layout(sizes: tuple[int, int], optimizer: str) -> None:
    chunk, proj_chunk = sizes
    inp = make(19, LAYOUTS["hope"], momentum=True, seed=3)
    check_fwd_bwd(inp, chunk_size=chunk, proj_chunk_size=proj_chunk, optimizer=optimizer)


@pytest.mark.parametrize("layout", ["fixed_k", "fixed_v", "adaptive_q", "no_decay"])
@pytest.mark.parametrize("momentum", [False, True], ids=["nomom", "mom"])
def test_chunk_equals_naive_ablation_layouts(layout: str, momentum: bool) -> None:
    inp = make(13, LAYOUTS[layout], momentum=momentum, seed=5)
    check_fwd_bwd(inp, chunk_size=4, proj_chunk_size=3, optimizer="dgd")


def _slice(inp: dict, a: int, b: int, state: SelfModState) -> dict:
    out = dict(inp, state=state)
    for name in ("x", "q", "k", "v", "momentum"):
        if inp[name] is not None:
            out[name] = inp[name][:, a:b]
    return out


@pytest.mark.parametrize("fn", [chunk_selfmod_titans, naive_selfmod_titans], ids=["chunk", "naive"])
def test_state_threading_and_decode(fn) -> None:  # noqa: ANN001
    T = 21
    inp = make(T, LAYOUTS["hope"], momentum=True, seed=7)
    kw = {"chunk_size": 8, "proj_chunk_size": 3}
    with torch.no_grad():
        o_full, st_full = fn(**inp, **kw)
        for bounds in ([0, 5, 13, 21], [0, 10] + list(range(11, 22))):
            st, os_ = inp["state"], []
            for a, b in zip(bounds[:-1], bounds[1:]):
                o, st = fn(**_slice(inp, a, b, st), **kw)
                os_.append(o)
            assert_close(torch.cat(os_, dim=1), o_full, **TOL)
            assert_state_close(st, st_full)


def test_first_output_reads_initial_memory_and_memories_move() -> None:
    """o_0 = M_memory,0(q_0) (read before write); all memories change after a chunk."""
    from nestlearn.ops.titans import memory_forward

    inp = make(8, LAYOUTS["adaptive_q"], momentum=False, seed=9)
    with torch.no_grad():
        o, st = chunk_selfmod_titans(**inp, chunk_size=4, proj_chunk_size=4)
        st0 = inp["state"]
        # q_0 from the initial projection memories (index of 'q' is 2)
        n = len(inp["names"])
        x0 = inp["x"][:, 0].repeat(1, n, 1)
        q0 = memory_forward(st0.proj.weights, x0, "silu").view(B, n, H, F)[:, 2]
        q0 = torch.nn.functional.normalize(q0, dim=-1)
        assert_close(o[:, 0], memory_forward(st0.memory.weights, q0, "silu"), **TOL)
        for a, b in ((st0.proj, st.proj), (st0.memory, st.memory)):
            assert all((u - w).abs().max() > 1e-6 for u, w in zip(a.weights, b.weights))


def test_bad_inputs_name_the_fix() -> None:
    inp = make(5, LAYOUTS["hope"], momentum=False)
    with pytest.raises(ValueError, match="adaptive iff"):
        chunk_selfmod_titans(**{**inp, "k": inp["x"]})
    with pytest.raises(ValueError, match="subset of"):
        chunk_selfmod_titans(**{**inp, "names": ("v", "k", "eta", "alpha")})
    with pytest.raises(ValueError, match="alpha_readout"):
        chunk_selfmod_titans(**{**inp, "alpha_readout": None})
    with pytest.raises(ValueError, match="chunk sizes"):
        chunk_selfmod_titans(**inp, chunk_size=0)
