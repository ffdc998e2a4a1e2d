"""RWKV-7 (DPLR delta rule) and Comba: chunked forms vs per-token references, float64, fwd + bwd.

Contracts under test (``ops/rwkv7/README.md``, ``ops/comba/README.md``): both recurrences are linear
in their state, so the chunked forms equal the loops at *any* chunk size, ragged lengths included,
for outputs, final states and the gradients of every input (``initial_state`` included), to 1e-9
relative.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from nestlearn.ops.comba import chunk_comba, naive_recurrent_comba
from nestlearn.ops.delta_rule import naive_recurrent_gated_delta_rule
from nestlearn.ops.rwkv7 import chunk_rwkv7, naive_recurrent_rwkv7

DT = torch.float64
B, H, K, V = 2, 3, 5, 7  # odd head dims on purpose
TOL = {"rtol": 1e-9, "atol": 1e-11}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def rwkv_inputs(T: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def rn(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen, dtype=DT)

    kap = F.normalize(rn(B, T, H, K), dim=-1)
    inp = {
        "r": rn(B, T, H, K),
        "w": -torch.rand(B, T, H, K, generator=gen, dtype=DT) * 0.6,
        "k": F.normalize(rn(B, T, H, K), dim=-1) * 0.7,
        "v": rn(B, T, H, V),
        "a": -kap,
        "b": kap * torch.rand(B, T, H, K, generator=gen, dtype=DT),
        "initial_state": rn(B, H, K, V) * 0.5,
    }
    return {n: t.requires_grad_() for n, t in inp.items()}


def comba_inputs(T: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def rn(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen, dtype=DT)

    k = F.normalize(rn(B, T, H, K), dim=-1)
    inp = {
        "q": rn(B, T, H, K),
        "k": k,
        "v": rn(B, T, H, V),
        "p": 0.6 * k + 0.1 * F.normalize(rn(B, T, H, K), dim=-1),  # not parallel to k on purpose
        "g": -torch.rand(B, T, H, generator=gen, dtype=DT) * 0.4,
        "beta": torch.rand(B, T, H, generator=gen, dtype=DT),
        "initial_state": rn(B, H, K, V) * 0.5,
    }
    return {n: t.requires_grad_() for n, t in inp.items()}


def run(fn, inp: dict, **kw) -> list[torch.Tensor]:
    """Output, final state and every input's gradient under random cotangents on both outputs."""
    o, S = fn(**inp, **kw)
    gen = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    loss = loss + (S * torch.randn(S.shape, generator=gen, dtype=S.dtype)).sum()
    return [o, S, *torch.autograd.grad(loss, list(inp.values()))]


OPS = {
    "rwkv7": (naive_recurrent_rwkv7, chunk_rwkv7, rwkv_inputs, {"scale": 0.7}),
    "comba": (naive_recurrent_comba, chunk_comba, comba_inputs, {}),
}
CASES = [(37, 1), (37, 4), (37, 16), (64, 16), (37, 64), (1, 16)]


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize(("T", "C"), CASES, ids=[f"T{t}-C{c}" for t, c in CASES])
def test_chunk_equals_recurrent_fwd_bwd(op: str, T: int, C: int) -> None:
    naive, chunk, make, kw = OPS[op]
    inp = make(T)
    ref = run(naive, inp, **kw)
    got = run(chunk, inp, chunk_size=C, **kw)
    names = ["o", "final_state", *(f"grad {n}" for n in inp)]
    for name, a, b in zip(names, got, ref):
        assert_close(a, b, **TOL, msg=lambda m, n=name: f"{op} {n}: {m}")


@pytest.mark.parametrize("op", list(OPS))
def test_state_threading_equals_one_call(op: str) -> None:
    """Splitting anywhere (mid-chunk too) and threading the state changes nothing."""
    _, chunk, make, kw = OPS[op]
    inp = {n: t.detach() for n, t in make(50).items()}
    o_full, S_full = chunk(**inp, chunk_size=16, **kw)
    S = inp["initial_state"]
    outs = []
    for a, b in [(0, 21), (21, 22), (22, 50)]:
        part = {n: t[:, a:b] for n, t in inp.items() if n != "initial_state"}
        o, S = chunk(**part, initial_state=S, chunk_size=16, **kw)
        outs.append(o)
    assert_close(torch.cat(outs, 1), o_full, **TOL)
    assert_close(S, S_full, **TOL)


def test_comba_with_p_equal_k_is_the_gated_delta_rule() -> None:
    inp = {n: t.detach() for n, t in comba_inputs(30).items()}
    p = inp.pop("p")
    del p
    o1, S1 = chunk_comba(**inp, p=inp["k"], chunk_size=8)
    o2, S2 = naive_recurrent_gated_delta_rule(**inp)
    assert_close(o1, o2, **TOL)
    assert_close(S1, S2, **TOL)


def test_rwkv7_is_a_delta_rule_that_recalls_its_last_write() -> None:
    """No decay, a = -k, b = k (alpha = 1), unit key: the write erases the old value along k and
    stores v, so reading with r = k right after recalls exactly v (DPLR = one l2 step, NL eq. 65)."""
    inp = {n: t.detach() for n, t in rwkv_inputs(20).items()}
    kk = F.normalize(inp["k"], dim=-1)
    o, _ = chunk_rwkv7(kk, torch.zeros_like(inp["w"]), kk, inp["v"], -kk, kk,
                       inp["initial_state"], chunk_size=8)  # fmt: skip
    assert_close(o, inp["v"], **TOL)


@pytest.mark.parametrize("op", list(OPS))
def test_float32_inner_math_and_dtypes(op: str) -> None:
    naive, chunk, make, kw = OPS[op]
    inp64 = {n: t.detach() for n, t in make(150).items()}
    o_ref, S_ref = naive(**inp64, **kw)
    o32, S32 = chunk(**{n: t.float() for n, t in inp64.items()}, chunk_size=64, **kw)
    assert o32.dtype == torch.float32 and S32.dtype == torch.float32
    assert_close(o32.double(), o_ref, rtol=1e-4, atol=1e-4)
    assert_close(S32.double(), S_ref, rtol=1e-4, atol=1e-4)
    inp16 = {n: (t.bfloat16() if n != "initial_state" else t.float()) for n, t in inp64.items()}
    o16, S16 = chunk(**inp16, **kw)
    assert o16.dtype == torch.bfloat16 and S16.dtype == torch.float32
    assert torch.isfinite(o16.float()).all()


def test_bad_inputs_name_the_shape() -> None:
    r = {n: t.detach() for n, t in rwkv_inputs(10).items()}
    with pytest.raises(ValueError, match="w must have r's shape"):
        chunk_rwkv7(**{**r, "w": r["w"][..., :2]})
    with pytest.raises(ValueError, match="initial_state must be"):
        chunk_rwkv7(**{**r, "initial_state": r["initial_state"][:1]})
    c = {n: t.detach() for n, t in comba_inputs(10).items()}
    with pytest.raises(ValueError, match="beta must be"):
        chunk_comba(**{**c, "beta": c["beta"][..., :1]})
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_comba(**c, chunk_size=0)
