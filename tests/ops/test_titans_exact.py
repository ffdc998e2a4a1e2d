"""The Titans op's strong-write modes, ``exact_output`` and ``hidden_chunk``, in float64.

Contracts (``src/nestlearn/ops/titans/README.md``, "Exact output layer"):
  * ``exact_output``: inside a chunk the output layer follows the exact per-token recurrence
    (its gradients at its running weights, step normalised by its input energy); the hidden
    layers keep the chunk-start gradient point. chunk == naive at any chunk size, fwd and bwd.
  * the linear memory with ``exact_output`` equals the per-token recurrence at any chunk size
    (it is the gated delta rule with momentum), so writes are as strong as the per-token rule.
  * ``hidden_chunk``: hidden layers read at the chunk start, advance once per chunk with the
    mean gradient, and keep every row's norm; chunk == naive; splits == one call.
Plus behaviour: a repeated key inside one chunk does not overshoot, and a long sequence of
strong writes stays bounded where the chunk-start rule diverges.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from nestlearn.ops.titans import (
    TitansState,
    chunk_titans,
    naive_chunk_titans,
    naive_recurrent_titans,
)
from tests.ops.test_titans_ops import TOL, assert_states_close, make_inputs, run

GATES = ("q", "k", "v", "theta", "eta", "alpha")


def _check(inp: dict, **kw) -> None:
    y_ref, st_ref, g_ref = run(naive_chunk_titans, inp, **kw)
    y, st, g = run(chunk_titans, inp, **kw)
    assert_close(y, y_ref, **TOL)
    assert_states_close(st, st_ref)
    for a, b in zip(g, g_ref, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, **TOL)


@pytest.mark.parametrize("chunk_size", [1, 4, 16])
@pytest.mark.parametrize("optimizer", ["gd", "dgd"])
@pytest.mark.parametrize("momentum", [False, True], ids=["nomom", "mom"])
@pytest.mark.parametrize("memory", ["linear", "mlp2", "mlp3"])
@pytest.mark.parametrize("hidden_chunk", [False, True], ids=["hid-token", "hid-chunk"])
def test_exact_output_chunk_equals_naive(
    hidden_chunk: bool, memory: str, momentum: bool, optimizer: str, chunk_size: int
) -> None:
    if hidden_chunk and memory == "linear":
        pytest.skip("a linear memory has no hidden layer")
    inp = make_inputs(37, memory, momentum, seed=2)
    _check(inp, chunk_size=chunk_size, optimizer=optimizer, exact_output=True,
           hidden_chunk=hidden_chunk)  # fmt: skip


@pytest.mark.parametrize("read", ["after", "before"])
@pytest.mark.parametrize("hidden_chunk", [False, True], ids=["hid-token", "hid-chunk"])
def test_exact_output_read_and_self_target(hidden_chunk: bool, read: str) -> None:
    inp = make_inputs(23, "mlp2", momentum=True, seed=4)
    inp["v"] = inp["v"].detach().div(inp["v"].detach().norm(dim=-1, keepdim=True)).requires_grad_()
    _check(inp, chunk_size=5, optimizer="dgd", read=read, self_target=True, exact_output=True,
           hidden_chunk=hidden_chunk)  # fmt: skip


@pytest.mark.parametrize("chunk_size", [3, 8, 64])
def test_linear_exact_output_is_the_per_token_recurrence(chunk_size: int) -> None:
    """Keys of norm below 1: the normalised step is the plain one (1 / max(1, |k|^2) = 1, also
    in its derivative), so any chunk size == chunk size 1."""
    inp = make_inputs(29, "linear", momentum=True, seed=6)
    inp["k"] = (0.9 * inp["k"].detach()).requires_grad_()
    y_ref, st_ref, g_ref = run(naive_recurrent_titans, inp, optimizer="dgd")
    y, st, g = run(chunk_titans, inp, chunk_size=chunk_size, optimizer="dgd", exact_output=True)
    assert_close(y, y_ref, **TOL)
    for a, b in zip(st.weights + st.momentum, st_ref.weights + st_ref.momentum, strict=True):
        assert_close(a, b, **TOL)
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b, **TOL)


@pytest.mark.parametrize("memory", ["linear", "mlp2"])
def test_exact_state_threading_any_split(memory: str) -> None:
    T, C = 29, 8
    inp = make_inputs(T, memory, momentum=True, seed=11)
    kw = {"chunk_size": C, "optimizer": "dgd", "exact_output": True,
          "hidden_chunk": memory != "linear"}  # fmt: skip
    with torch.no_grad():
        y_full, st_full = chunk_titans(**inp, **kw)
        for cuts in ([8, 16, 24], [5, 13, 14, 27], list(range(1, T))):
            bounds = [0, *cuts, T]
            st, ys = inp["initial_state"], []
            for a, b in zip(bounds[:-1], bounds[1:]):
                seg = {n: (inp[n][:, a:b] if inp[n] is not None else None) for n in GATES}
                y, st = chunk_titans(**seg, initial_state=st, **kw)
                ys.append(y)
            assert_close(torch.cat(ys, dim=1), y_full, **TOL)
            assert_states_close(st, st_full)


def _one_head(T: int, keys: torch.Tensor, vals: torch.Tensor, theta: float) -> dict:
    return {
        "q": keys[None, :, None],
        "k": keys[None, :, None],
        "v": vals[None, :, None],
        "theta": torch.full((1, T, 1), theta, dtype=keys.dtype),
    }


def test_repeated_key_in_one_chunk_does_not_overshoot() -> None:
    """Writing the same key 16 times in one chunk with theta = 0.5 (a full write per token):
    the exact rule stores the last value; the chunk-start rule sums 16 full writes."""
    D = 8
    g = torch.Generator().manual_seed(0)
    k = torch.nn.functional.normalize(torch.randn(D, generator=g, dtype=torch.float64), dim=0)
    vals = torch.randn(16, D, generator=g, dtype=torch.float64)
    inp = _one_head(16, k.expand(16, D), vals, 0.5)
    st0 = TitansState((torch.zeros(1, 1, D, D, dtype=torch.float64),))
    _, st = chunk_titans(**inp, initial_state=st0, chunk_size=16, exact_output=True)
    assert_close(st.weights[0][0, 0] @ k, vals[-1], rtol=1e-12, atol=1e-12)
    _, st_old = chunk_titans(**inp, initial_state=st0, chunk_size=16)
    # every write of the chunk-start rule sees the empty memory: it stores the sum of the values
    assert_close(st_old.weights[0][0, 0] @ k, vals.sum(0), rtol=1e-12, atol=1e-12)


def test_strong_writes_stay_bounded_over_a_long_stream() -> None:
    """theta = 1 (the largest step the modules allow), momentum 0.5, correlated keys, 2048 tokens:
    with exact_output + hidden_chunk the MLP memory stays bounded; the chunk-start rule blows up."""
    T, D, Hd = 2048, 16, 32
    g = torch.Generator().manual_seed(1)
    base = torch.randn(D, generator=g)
    keys = torch.nn.functional.normalize(base + 0.5 * torch.randn(T, D, generator=g), dim=-1)
    vals = torch.nn.functional.normalize(torch.randn(T, D, generator=g), dim=-1)
    inp = _one_head(T, keys, vals, 1.0)
    inp["eta"] = torch.full((1, T, 1), 0.5)
    inp["alpha"] = torch.full((1, T, 1), 0.001)
    W = (torch.randn(1, 1, Hd, D, generator=g) / D**0.5, torch.randn(1, 1, D, Hd, generator=g) / Hd**0.5)
    y, st = chunk_titans(**inp, initial_state=TitansState(W), chunk_size=64, exact_output=True,
                         hidden_chunk=True)  # fmt: skip
    assert torch.isfinite(y).all() and y.abs().max() < 20
    assert_close(st.weights[0].norm(dim=-1), W[0].norm(dim=-1), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        y_old, _ = chunk_titans(**inp, initial_state=TitansState(W), chunk_size=64)
    assert not torch.isfinite(y_old).all() or y_old.abs().max() > 1e3
