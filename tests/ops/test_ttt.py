"""Dual-form mini-batch TTT vs its per-token reference, in float64, forward and backward.

Contracts under test (``src/nestlearn/ops/ttt/README.md``):
  * ``chunk_ttt`` == ``naive_ttt`` (per-token loop, inner gradients by autograd) at any mini-batch
    size, for outputs, final state (weights, anchor, offset) and the gradients of every input,
    including the initial and anchor weights and the LayerNorm parameters;
  * mini-batch size 1 == plain online gradient descent, written here independently;
  * one full mini-batch == one step on the mini-batch's summed loss at its starting weights;
  * threading the state through any split (mid-mini-batch too, token-by-token) == one call.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad
from torch.testing import assert_close

from nestlearn.ops.ttt import TTTState, chunk_ttt, naive_ttt
from nestlearn.ops.ttt.common import gelu_tanh_grad, inner_forward, ln_l2_grad

DT = torch.float64
B, H, FD, FH = 2, 2, 4, 8
TOL = {"rtol": 1e-9, "atol": 1e-10}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Tiny tensors: a second thread costs more than it saves, and much more on a busy machine.
    # (The shared conftest restores the thread count after each test.)
    torch.set_num_threads(1)


def make_inputs(T: int, kind: str, offset: int = 0, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def rn(*s: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*s, generator=g, dtype=DT) * scale).requires_grad_()

    def weights() -> tuple[torch.Tensor, ...]:
        if kind == "linear":
            return (rn(B, H, FD, FD, scale=0.3), rn(B, H, FD, scale=0.1))
        return (
            rn(B, H, FD, FH, scale=0.3),
            rn(B, H, FH, scale=0.1),
            rn(B, H, FH, FD, scale=0.3),
            rn(B, H, FD, scale=0.1),
        )

    w = weights()
    return {
        "q": rn(B, T, H, FD),
        "k": rn(B, T, H, FD),
        "v": rn(B, T, H, FD),
        "eta": (0.3 * torch.rand(B, T, H, generator=g, dtype=DT)).requires_grad_(),
        "ln_weight": (1 + 0.2 * torch.randn(H, FD, generator=g, dtype=DT)).requires_grad_(),
        "ln_bias": rn(H, FD, scale=0.1),
        "initial_state": TTTState(w, weights() if offset else None, offset),
    }


def leaves(inp: dict) -> list[torch.Tensor]:
    st = inp["initial_state"]
    names = ("q", "k", "v", "eta", "ln_weight", "ln_bias")
    return [inp[n] for n in names] + list(st.weights) + list(st.anchor or ())


def run(fn, inp: dict, **kw) -> tuple[torch.Tensor, TTTState, list[torch.Tensor]]:
    o, st = fn(**inp, **kw)
    g = torch.Generator().manual_seed(1)  # random cotangents on the output and the final weights
    loss = (o * torch.randn(o.shape, generator=g, dtype=DT)).sum()
    for w in st.weights:
        loss = loss + (w * torch.randn(w.shape, generator=g, dtype=DT)).sum()
    return o, st, list(torch.autograd.grad(loss, leaves(inp)))


def assert_states_close(a: TTTState, b: TTTState) -> None:
    assert a.offset == b.offset
    for x, y in zip(a.weights, b.weights, strict=True):
        assert_close(x, y, **TOL)
    assert (a.anchor is None) == (b.anchor is None)
    for x, y in zip(a.anchor or (), b.anchor or (), strict=True):
        assert_close(x, y, **TOL)


@pytest.mark.parametrize(
    "mini_batch_size, offset", [(1, 0), (4, 3), (16, 0), (16, 5)], ids=lambda x: str(x)
)
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_chunk_equals_naive_fwd_bwd(kind: str, mini_batch_size: int, offset: int) -> None:
    inp = make_inputs(23, kind, offset)  # 23 is not a multiple of 4 or 16
    o_ref, st_ref, g_ref = run(naive_ttt, inp, mini_batch_size=mini_batch_size)
    o, st, g = run(chunk_ttt, inp, mini_batch_size=mini_batch_size)
    assert_close(o, o_ref, **TOL)
    assert_states_close(st, st_ref)
    for i, (a, b) in enumerate(zip(g, g_ref, strict=True)):
        assert_close(a, b, **TOL, msg=lambda m, i=i: f"grad of leaf {i}: {m}")


def _token_loss(w: tuple, k, v, lw, lb) -> torch.Tensor:
    z = inner_forward(w, k)
    return 0.5 * (F.layer_norm(z, (FD,), eps=1e-6) * lw + lb - (v - k)).pow(2).sum()


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_mini_batch_one_is_online_gradient_descent(kind: str) -> None:
    """b = 1: every token takes one GD step from the weights its predecessor left."""
    inp = {k: v for k, v in make_inputs(9, kind, seed=4).items()}
    o, st = chunk_ttt(**inp, mini_batch_size=1)
    lw, lb = inp["ln_weight"], inp["ln_bias"]
    for bi in range(B):
        for h in range(H):
            w = tuple(t[bi, h] for t in inp["initial_state"].weights)
            for t in range(9):
                k, v, q = (inp[n][bi, t, h] for n in ("k", "v", "q"))
                gw = grad(_token_loss)(w, k, v, lw[h], lb[h])
                w = tuple(a - inp["eta"][bi, t, h] * b for a, b in zip(w, gw))
                read = q + F.layer_norm(inner_forward(w, q), (FD,), eps=1e-6) * lw[h] + lb[h]
                assert_close(o[bi, t, h], read, **TOL)
            for a, b in zip(st.weights, w):
                assert_close(a[bi, h], b, **TOL)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_full_mini_batch_is_one_step_on_the_summed_loss(kind: str) -> None:
    """W_b = W_0 - grad_W sum_s eta_s l(W; k_s, v_s) at W_0, and it differs from online GD."""
    bs = 6
    inp = make_inputs(bs, kind, seed=6)
    _, st = chunk_ttt(**inp, mini_batch_size=bs)
    _, st_online = chunk_ttt(**inp, mini_batch_size=1)
    lw, lb = inp["ln_weight"], inp["ln_bias"]
    for bi in range(B):
        for h in range(H):
            w0 = tuple(t[bi, h] for t in inp["initial_state"].weights)

            def summed(w: tuple, bi: int = bi, h: int = h) -> torch.Tensor:
                return sum(
                    inp["eta"][bi, s, h]
                    * _token_loss(w, inp["k"][bi, s, h], inp["v"][bi, s, h], lw[h], lb[h])
                    for s in range(bs)
                )

            expected = tuple(a - b for a, b in zip(w0, grad(summed)(w0)))
            for a, b in zip(st.weights, expected):
                assert_close(a[bi, h], b, **TOL)
    assert not torch.allclose(st.weights[0], st_online.weights[0], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize(
    "splits", [[3, 4, 9, 30], [16, 17, 30], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 30]], ids=str
)
def test_state_threading_equals_one_call(kind: str, splits: list[int]) -> None:
    inp = make_inputs(30, kind, seed=8)
    o_full, st_full = chunk_ttt(**inp, mini_batch_size=8)
    st, lo, parts = inp["initial_state"], 0, []
    for hi in splits:
        seg = {n: (inp[n][:, lo:hi] if n in ("q", "k", "v", "eta") else inp[n]) for n in inp}
        seg["initial_state"] = st
        o, st = chunk_ttt(**seg, mini_batch_size=8)
        parts.append(o)
        lo = hi
    assert_close(torch.cat(parts, 1), o_full, **TOL)
    assert_states_close(st, st_full)


def test_closed_form_helpers_match_autograd() -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5, 7, generator=g, dtype=DT, requires_grad=True)
    tgt, w, b = (torch.randn(7, generator=g, dtype=DT) for _ in range(3))
    loss = 0.5 * (F.layer_norm(z, (7,), eps=1e-6) * w + b - tgt).pow(2).sum()
    (gz,) = torch.autograd.grad(loss, z)
    assert_close(ln_l2_grad(z, tgt, w, b, 1e-6), gz, **TOL)
    x = torch.linspace(-6, 6, 101, dtype=DT, requires_grad=True)
    (gx,) = torch.autograd.grad(F.gelu(x, approximate="tanh").sum(), x)
    assert_close(gelu_tanh_grad(x), gx, **TOL)


def test_float32_inputs_run_in_float32_and_match() -> None:
    inp = make_inputs(20, "mlp", seed=1)
    f32 = {n: (v.detach().float() if torch.is_tensor(v) else v) for n, v in inp.items()}
    st = inp["initial_state"]
    f32["initial_state"] = TTTState(tuple(w.detach().float() for w in st.weights))
    with torch.no_grad():
        o_ref, s_ref = naive_ttt(**f32, mini_batch_size=8)
    o, s = chunk_ttt(**f32, mini_batch_size=8)
    assert o.dtype == torch.float32 and s.weights[0].dtype == torch.float32
    assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(s.weights, s_ref.weights):
        assert_close(a, b, rtol=1e-4, atol=1e-4)


def _plain(T: int = 5) -> dict:
    inp = make_inputs(T, "linear")
    out = {n: (v.detach() if torch.is_tensor(v) else v) for n, v in inp.items()}
    out["initial_state"] = TTTState(tuple(w.detach() for w in inp["initial_state"].weights))
    return out


@pytest.mark.parametrize(
    "change, match",
    [
        ({"eta": torch.rand(B, 5, 3)}, "eta must be"),
        ({"v": torch.rand(B, 5, H, 3)}, "q, k, v must all be"),
        ({"ln_weight": torch.rand(H, 3)}, "ln_weight and ln_bias"),
        ({"initial_state": TTTState((torch.rand(B, H, FD, FD),))}, r"\(W1, b1\)"),
        ({"initial_state": TTTState((torch.rand(B, H, FD, 3), torch.rand(B, H, FD)))}, r"weights\[0\]"),
        ({"initial_state": TTTState((torch.rand(B, H, FD, FD), torch.rand(B, H, FD)), None, 2)}, "anchor"),
    ],
)  # fmt: skip
def test_bad_inputs_name_the_argument(change: dict, match: str) -> None:
    for fn in (naive_ttt, chunk_ttt):
        with pytest.raises(ValueError, match=match):
            fn(**{**_plain(), **change}, mini_batch_size=4)
    with pytest.raises(ValueError, match="mini_batch_size"):
        chunk_ttt(**_plain(), mini_batch_size=0)
