"""Chunkwise retention vs the per-token reference and RetNet's parallel form, float64, fwd and bwd.

Contract under test (``src/nestlearn/ops/retention/README.md``): ``chunk_retention`` equals the
recurrence at any chunk size, ragged lengths included, for the output, the final state and the
gradients of q, k, v, gamma and the initial state.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from nestlearn.ops.retention import (
    chunk_retention,
    naive_parallel_retention,
    naive_recurrent_retention,
)

DT = torch.float64
B, H, K, V = 2, 3, 5, 7
TOL = {"rtol": 1e-9, "atol": 1e-11}


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors gain nothing from a second thread; on a shared, oversubscribed machine two
    OpenMP threads can be far slower than one (conftest restores the thread count)."""
    torch.set_num_threads(1)


def make_inputs(T: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def rn(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen, dtype=DT)

    inp = {
        "q": rn(B, T, H, K) * 0.5,
        "k": rn(B, T, H, K) * 0.5,
        "v": rn(B, T, H, V),
        # fast decays so the test sees them act within a few chunks (RetNet's are 1 - 2^(-5-h))
        "gamma": 1 - 2.0 ** (-1.0 - torch.arange(H, dtype=DT)),
        "initial_state": rn(B, H, K, V) * 0.5,
    }
    return {n: t.requires_grad_() for n, t in inp.items()}


def run(fn, inp: dict, **kw) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    o, S = fn(**inp, **kw)
    gen = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    loss = loss + (S * torch.randn(S.shape, generator=gen, dtype=S.dtype)).sum()
    return o, S, list(torch.autograd.grad(loss, list(inp.values())))


def _check(got: tuple, ref: tuple, names: list[str]) -> None:
    assert_close(got[0], ref[0], **TOL)
    assert_close(got[1], ref[1], **TOL)
    for name, a, b in zip(names, got[2], ref[2]):
        assert_close(a, b, **TOL, msg=lambda m, n=name: f"grad of {n}: {m}")


@pytest.mark.parametrize(
    ("T", "C"),
    [
        pytest.param(37, 1, id="T37-C1"),
        pytest.param(37, 4, id="T37-C4"),
        pytest.param(37, 16, id="T37-C16-ragged"),
        pytest.param(64, 16, id="T64-C16-aligned"),
        pytest.param(37, 64, id="T37-C64-one-chunk"),
        pytest.param(1, 64, id="T1"),
    ],
)
def test_chunk_equals_recurrent_fwd_bwd(T: int, C: int) -> None:
    inp = make_inputs(T)
    _check(run(chunk_retention, inp, chunk_size=C), run(naive_recurrent_retention, inp), list(inp))


def test_auto_chunk_size_is_exact_with_and_without_grad() -> None:
    inp = make_inputs(70)
    ref = run(naive_recurrent_retention, inp)
    _check(run(chunk_retention, inp, chunk_size=None), ref, list(inp))  # 64 under autograd
    with torch.no_grad():
        o, S = chunk_retention(**inp)  # 32
    assert_close(o, ref[0], **TOL)
    assert_close(S, ref[1], **TOL)


def test_parallel_form_equals_recurrent() -> None:
    """RetNet eq. 5 (parallel, decay mask D) == eq. 1 (recurrent), initial state included."""
    inp = make_inputs(29)
    _check(run(naive_parallel_retention, inp), run(naive_recurrent_retention, inp), list(inp))


def test_state_threading_equals_one_call() -> None:
    inp = {n: t.detach() for n, t in make_inputs(50).items()}
    o_full, S_full = chunk_retention(**inp, chunk_size=16)
    S, outs = inp["initial_state"], []
    for a, b in [(0, 21), (21, 22), (22, 50)]:
        o, S = chunk_retention(
            inp["q"][:, a:b], inp["k"][:, a:b], inp["v"][:, a:b], inp["gamma"], S, chunk_size=16
        )
        outs.append(o)
    assert_close(torch.cat(outs, 1), o_full, **TOL)
    assert_close(S, S_full, **TOL)


def test_gamma_one_is_causal_linear_attention() -> None:
    """No decay: o_t = scale * sum_{s<=t} (q_t . k_s) v_s + scale * S_0^T q_t."""
    inp = {n: t.detach() for n, t in make_inputs(20).items()}
    gamma = torch.ones(H, dtype=DT)
    o, _ = chunk_retention(inp["q"], inp["k"], inp["v"], gamma, inp["initial_state"], chunk_size=8)
    q, k, v = (t.transpose(1, 2) for t in (inp["q"], inp["k"], inp["v"]))
    att = (q @ k.transpose(-1, -2)).tril()
    ref = (att @ v + q @ inp["initial_state"]) * K**-0.5
    assert_close(o, ref.transpose(1, 2), **TOL)


def test_float32_and_bfloat16_dtypes() -> None:
    inp64 = {n: t.detach() for n, t in make_inputs(150).items()}
    inp64["gamma"] = 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=DT))  # RetNet's decays
    o_ref, S_ref = naive_recurrent_retention(**inp64)
    o32, S32 = chunk_retention(**{n: t.float() for n, t in inp64.items()}, chunk_size=64)
    assert o32.dtype == torch.float32 and S32.dtype == torch.float32
    assert_close(o32.double(), o_ref, rtol=1e-4, atol=1e-4)
    assert_close(S32.double(), S_ref, rtol=1e-4, atol=1e-4)
    o16, S16 = chunk_retention(
        inp64["q"].bfloat16(), inp64["k"].bfloat16(), inp64["v"].bfloat16(), inp64["gamma"].float()
    )
    assert o16.dtype == torch.bfloat16 and S16.dtype == torch.float32


def test_bad_inputs_name_the_shape() -> None:
    inp = {n: t.detach() for n, t in make_inputs(10).items()}
    with pytest.raises(ValueError, match="one decay per head"):
        chunk_retention(inp["q"], inp["k"], inp["v"], inp["gamma"][:2])
    with pytest.raises(ValueError, match="v must be"):
        chunk_retention(inp["q"], inp["k"], inp["v"][:, :3], inp["gamma"])
