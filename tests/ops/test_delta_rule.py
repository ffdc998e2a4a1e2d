"""Chunked delta rule (WY / UT transform) vs the per-token reference, float64, forward and backward.

Contract under test (``src/nestlearn/ops/delta_rule/README.md``): the chunked forms equal the
recurrence at *any* chunk size, including lengths that are not a multiple of it, for the output,
the final state and the gradients of every input (q, k, v, beta, g, initial_state).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from nestlearn.ops.delta_rule import (
    chunk_delta_rule,
    chunk_gated_delta_rule,
    naive_recurrent_delta_rule,
    naive_recurrent_gated_delta_rule,
)

DT = torch.float64
B, H, K, V = 2, 3, 5, 7  # odd head dims on purpose
TOL = {"rtol": 1e-9, "atol": 1e-11}


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors gain nothing from a second thread; on a shared, oversubscribed machine two
    OpenMP threads can be far slower than one (conftest restores the thread count)."""
    torch.set_num_threads(1)


def make_inputs(T: int, gated: bool, seed: int = 0, dtype: torch.dtype = DT) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def rn(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen, dtype=DT)

    inp = {
        "q": F.normalize(rn(B, T, H, K), dim=-1),
        "k": F.normalize(rn(B, T, H, K), dim=-1),
        "v": rn(B, T, H, V),
        "beta": torch.rand(B, T, H, generator=gen, dtype=DT) * 0.9 + 0.05,
        "initial_state": rn(B, H, K, V) * 0.5,
    }
    if gated:
        inp["g"] = -torch.rand(B, T, H, generator=gen, dtype=DT) * 0.4
    return {n: t.to(dtype).requires_grad_() for n, t in inp.items()}


def run(fn, inp: dict, **kw) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Output, final state and the gradients of every input under random cotangents on both."""
    o, S = fn(**inp, **kw)
    gen = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    loss = loss + (S * torch.randn(S.shape, generator=gen, dtype=S.dtype)).sum()
    return o, S, list(torch.autograd.grad(loss, list(inp.values())))


OPS = {
    "plain": (naive_recurrent_delta_rule, chunk_delta_rule),
    "gated": (naive_recurrent_gated_delta_rule, chunk_gated_delta_rule),
}
CASES = [
    pytest.param(37, 1, id="T37-C1"),
    pytest.param(37, 4, id="T37-C4"),
    pytest.param(37, 16, id="T37-C16-ragged"),
    pytest.param(64, 16, id="T64-C16-aligned"),
    pytest.param(37, 64, id="T37-C64-one-chunk"),
    pytest.param(1, 64, id="T1"),
]


@pytest.mark.parametrize("variant", list(OPS))
@pytest.mark.parametrize(("T", "C"), CASES)
def test_chunk_equals_recurrent_fwd_bwd(variant: str, T: int, C: int) -> None:
    assert_chunk_equals_recurrent(variant, make_inputs(T, gated=variant == "gated"), C)


def assert_chunk_equals_recurrent(variant: str, inp: dict, C: int) -> None:
    """Output, final state and every input's gradient of the chunked op equal the recurrence."""
    naive, chunk = OPS[variant]
    o_ref, S_ref, g_ref = run(naive, inp)
    o, S, grads = run(chunk, inp, chunk_size=C)
    assert_close(o, o_ref, **TOL)
    assert_close(S, S_ref, **TOL)
    for name, a, b in zip(inp, grads, g_ref):
        assert_close(a, b, **TOL, msg=lambda m, n=name: f"grad of {n}: {m}")


@pytest.mark.parametrize("variant", list(OPS))
def test_auto_chunk_size_is_exact_with_and_without_grad(variant: str) -> None:
    """``chunk_size=None`` picks 16 for inference and 64 under autograd: both exact."""
    naive, chunk = OPS[variant]
    inp = make_inputs(70, gated=variant == "gated")
    o_ref, S_ref, g_ref = run(naive, inp)
    o, S, grads = run(chunk, inp, chunk_size=None)  # 64 (gradients flow)
    assert_close(o, o_ref, **TOL)
    for a, b in zip(grads, g_ref):
        assert_close(a, b, **TOL)
    with torch.no_grad():
        o, S = chunk(**inp)  # 16
    assert_close(o, o_ref, **TOL)
    assert_close(S, S_ref, **TOL)


@pytest.mark.parametrize("variant", list(OPS))
def test_state_threading_equals_one_call(variant: str) -> None:
    """Splitting the sequence anywhere (mid-chunk too) and threading the state changes nothing."""
    _, chunk = OPS[variant]
    inp = {n: t.detach() for n, t in make_inputs(50, gated=variant == "gated").items()}
    o_full, S_full = chunk(**inp, chunk_size=16)
    S = inp["initial_state"]
    outs = []
    for a, b in [(0, 21), (21, 22), (22, 50)]:
        part = {n: t[:, a:b] for n, t in inp.items() if n != "initial_state"}
        o, S = chunk(**part, initial_state=S, chunk_size=16)
        outs.append(o)
    assert_close(torch.cat(outs, 1), o_full, **TOL)
    assert_close(S, S_full, **TOL)


def test_gate_zero_is_plain_delta_rule() -> None:
    inp = {n: t.detach() for n, t in make_inputs(30, gated=True).items()}
    g = inp.pop("g")
    o1, S1 = chunk_delta_rule(**inp, chunk_size=8)
    o2, S2 = chunk_gated_delta_rule(**inp, g=torch.zeros_like(g), chunk_size=8)
    assert_close(o1, o2, **TOL)
    assert_close(S1, S2, **TOL)


def test_delta_rule_writes_exactly_with_beta_one() -> None:
    """With beta = 1 and a unit key, the memory recalls the value just written (delta rule = one
    exact l2 regression step, NL eq. 65): ``S_t^T k_t = v_t``."""
    inp = {n: t.detach() for n, t in make_inputs(20, gated=False).items()}
    inp["beta"] = torch.ones_like(inp["beta"])
    k, v = inp["k"], inp["v"]
    # read each token's own key right after writing it: use q = k and scale = 1
    o, _ = chunk_delta_rule(k, k, v, inp["beta"], inp["initial_state"], scale=1.0, chunk_size=8)
    assert_close(o, v, **TOL)


@pytest.mark.parametrize("variant", list(OPS))
def test_float32_inner_math_and_dtypes(variant: str) -> None:
    """float32 and bfloat16 inputs: output in the input dtype, state in float32, close to float64."""
    naive, chunk = OPS[variant]
    inp64 = {n: t.detach() for n, t in make_inputs(150, gated=variant == "gated").items()}
    o_ref, S_ref = naive(**inp64)
    inp32 = {n: t.float() for n, t in inp64.items()}
    o32, S32 = chunk(**inp32, chunk_size=64)
    assert o32.dtype == torch.float32 and S32.dtype == torch.float32
    assert_close(o32.double(), o_ref, rtol=1e-4, atol=1e-4)
    assert_close(S32.double(), S_ref, rtol=1e-4, atol=1e-4)
    inp16 = {n: (t.bfloat16() if n != "initial_state" else t.float()) for n, t in inp64.items()}
    o16, S16 = chunk(**inp16, chunk_size=64)
    assert o16.dtype == torch.bfloat16 and S16.dtype == torch.float32
    assert torch.isfinite(o16.float()).all()


def test_strong_decay_stays_finite_in_float32() -> None:
    """Cumulative log-decays far below float32's exp range (-5 per token, -320 per chunk) underflow
    to an exactly forgotten state instead of producing inf/nan, in values and gradients."""
    inp64 = {n: t.detach() for n, t in make_inputs(130, gated=True).items()}
    inp64["g"] = torch.full_like(inp64["g"], -5.0)
    o_ref, S_ref = naive_recurrent_gated_delta_rule(**inp64)
    inp32 = {n: t.float().requires_grad_() for n, t in inp64.items()}
    o, S, grads = run(chunk_gated_delta_rule, inp32, chunk_size=64)
    assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-5)
    assert_close(S.double(), S_ref, rtol=1e-4, atol=1e-5)
    assert all(torch.isfinite(gr).all() for gr in grads)


def test_bad_inputs_name_the_shape() -> None:
    inp = {n: t.detach() for n, t in make_inputs(10, gated=True).items()}
    with pytest.raises(ValueError, match="beta must be"):
        chunk_delta_rule(inp["q"], inp["k"], inp["v"], inp["beta"][..., :1])
    with pytest.raises(ValueError, match="initial_state must be"):
        chunk_delta_rule(inp["q"], inp["k"], inp["v"], inp["beta"], inp["initial_state"][:1])
    with pytest.raises(ValueError, match="g must be"):
        chunk_gated_delta_rule(inp["q"], inp["k"], inp["v"], inp["g"][:, :3], inp["beta"])
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_delta_rule(inp["q"], inp["k"], inp["v"], inp["beta"], chunk_size=0)


@pytest.mark.parametrize("variant", list(OPS))
@pytest.mark.parametrize(("T", "C"), [(37, 4), (37, 16)])
def test_chunk_equals_recurrent_with_negative_eigenvalues(variant: str, T: int, C: int) -> None:
    """``allow_neg_eigval`` doubles beta: with beta in (0, 2) the transition ``I - beta k k^T``
    has an eigenvalue below zero, and the chunked form is still exact, forward and backward."""
    inp = make_inputs(T, gated=variant == "gated")
    with torch.no_grad():
        inp["beta"].mul_(2.0)  # (0.1, 1.9)
    assert_chunk_equals_recurrent(variant, inp, C)


@pytest.mark.parametrize("n", [1, 2, 5, 6])
def test_beta_two_reflects_the_state_so_it_counts_parity(n: int) -> None:
    """With beta = 2 and a value of zero, each write of the same unit key is the Householder
    reflection ``S (I - 2 k k^T)``: the state's component along ``k`` flips sign per write, so
    after ``n`` writes it holds ``n mod 2`` (the mechanism parity needs; with beta <= 1 the
    component can only shrink)."""
    gen = torch.Generator().manual_seed(3)
    k = F.normalize(torch.randn(1, 1, 1, K, generator=gen, dtype=DT), dim=-1).expand(1, n, 1, K)
    S0 = torch.randn(1, 1, K, V, generator=gen, dtype=DT)
    v = torch.zeros(1, n, 1, V, dtype=DT)
    beta = torch.full((1, n, 1), 2.0, dtype=DT)
    _, S = chunk_delta_rule(k, k, v, beta, S0, chunk_size=4)
    k0 = k[0, 0, 0]
    along = k0 @ S[0, 0]  # the component along k, [V]
    expect = (k0 @ S0[0, 0]) * (-1) ** n
    assert_close(along, expect, rtol=1e-12, atol=1e-12)
    ortho = S[0, 0] - torch.outer(k0, along)  # the rest is untouched
    assert_close(ortho, S0[0, 0] - torch.outer(k0, k0 @ S0[0, 0]), rtol=1e-12, atol=1e-12)
