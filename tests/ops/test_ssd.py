"""Chunked Mamba2 SSD vs its per-token reference, in float64, forward and backward.

Contract under test (``src/nestlearn/ops/ssd/README.md``): ``chunk_ssd`` equals ``naive_ssd`` at
*any* chunk size (the recurrence is linear in the state), for the output, the final state and the
gradient of every input including the initial state; and both equal the SSD's quadratic
("attention") form built directly from the definition.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from nestlearn.ops.ssd import chunk_ssd, naive_ssd

DT = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-11}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Tiny tensors: a second thread costs more than it saves, and much more on a busy machine.
    # (The shared conftest restores the thread count after each test.)
    torch.set_num_threads(1)


def make_inputs(
    T: int, *, B: int = 2, H: int = 4, P: int = 3, G: int = 2, N: int = 5, seed: int = 0,
    skip: bool = True, init: bool = True, dt_scale: float = 0.5,
) -> dict:  # fmt: skip
    g = torch.Generator().manual_seed(seed)

    def rn(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g, dtype=DT).requires_grad_()

    return {
        "x": rn(B, T, H, P),
        "dt": (dt_scale * torch.rand(B, T, H, generator=g, dtype=DT) + 0.01).requires_grad_(),
        "A": (-0.2 - 2 * torch.rand(H, generator=g, dtype=DT)).requires_grad_(),
        "B": rn(B, T, G, N),
        "C": rn(B, T, G, N),
        "D": rn(H) if skip else None,
        "initial_state": rn(B, H, P, N) if init else None,
    }


def leaves(inp: dict) -> list[torch.Tensor]:
    return [t for t in inp.values() if t is not None]


def run(fn, inp: dict, **kw) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    y, S = fn(**inp, **kw)
    g = torch.Generator().manual_seed(1)  # random cotangents on the output and the final state
    loss = (y * torch.randn(y.shape, generator=g, dtype=DT)).sum()
    loss = loss + (S * torch.randn(S.shape, generator=g, dtype=DT)).sum()
    return y, S, list(torch.autograd.grad(loss, leaves(inp)))


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 16, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("groups", [1, 2], ids=["G1", "G2"])
def test_chunk_equals_naive_fwd_bwd(chunk_size: int, groups: int) -> None:
    inp = make_inputs(37, G=groups)  # 37 is not a multiple of 3, 8 or 16; 64 > T
    y_ref, S_ref, g_ref = run(naive_ssd, inp)
    y, S, g = run(chunk_ssd, inp, chunk_size=chunk_size)
    assert_close(y, y_ref, **TOL)
    assert_close(S, S_ref, **TOL)
    for name, a, b in zip([k for k, v in inp.items() if v is not None], g, g_ref, strict=True):
        assert_close(a, b, **TOL, msg=lambda m, n=name: f"grad of {n}: {m}")


def test_no_skip_no_initial_state_and_many_chunks() -> None:
    # 150 tokens in chunks of 2 = 75 chunks: more than one group of the inter-chunk pass.
    inp = make_inputs(150, G=1, skip=False, init=False, seed=3)
    y_ref, S_ref, g_ref = run(naive_ssd, inp)
    y, S, g = run(chunk_ssd, inp, chunk_size=2)
    assert_close(y, y_ref, **TOL)
    assert_close(S, S_ref, **TOL)
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b, **TOL)


def quadratic_form(x, dt, A, B, C, D, initial_state) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSD as one masked matrix (Dao & Gu 2024, eq. of the "attention" form):

    y_t = sum_{s<=t} exp(sum_{s<j<=t} dt_j A) (C_t . B_s) dt_s x_s + exp(sum_{j<=t} dt_j A) S_0 C_t
          + D x_t
    """
    Bsz, T, H, P = x.shape
    r = H // B.shape[2]
    Bh, Ch = B.repeat_interleave(r, 2), C.repeat_interleave(r, 2)  # [B, T, H, N]
    cum = torch.cumsum(dt * A, dim=1)  # [B, T, H]
    seg = cum[:, :, None, :] - cum[:, None, :, :]  # [B, t, s, H]
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, :, :, None]
    L = torch.where(mask, torch.exp(seg.masked_fill(~mask, 0.0)), 0.0)
    CB = torch.einsum("bthn,bshn->btsh", Ch, Bh)
    y = torch.einsum("btsh,bsh,bshp->bthp", L * CB, dt, x)
    y = y + torch.exp(cum)[..., None] * torch.einsum("bhpn,bthn->bthp", initial_state, Ch)
    y = y + D[:, None] * x
    S = torch.exp(cum[:, -1])[..., None, None] * initial_state + torch.einsum(
        "bsh,bsh,bshp,bshn->bhpn", torch.exp(cum[:, -1:] - cum), dt, x, Bh
    )
    return y, S


@pytest.mark.parametrize("fn", [naive_ssd, chunk_ssd], ids=["naive", "chunk"])
def test_matches_quadratic_form_from_the_definition(fn) -> None:
    inp = make_inputs(19, G=2, seed=5)
    y_ref, S_ref = quadratic_form(**inp)
    y, S = fn(**inp, chunk_size=4)
    assert_close(y, y_ref, **TOL)
    assert_close(S, S_ref, **TOL)


@pytest.mark.parametrize("splits", [[5, 6, 20, 37], [1, 2, 3, 37], [16, 32, 37]])
def test_state_threading_equals_one_call(splits: list[int]) -> None:
    inp = make_inputs(37, G=2, seed=7)
    y_full, S_full = chunk_ssd(**inp, chunk_size=8)
    S, lo, parts = inp["initial_state"], 0, []
    for hi in splits:
        seg = {k: (v[:, lo:hi] if k in ("x", "dt", "B", "C") else v) for k, v in inp.items()}
        seg["initial_state"] = S
        y, S = chunk_ssd(**seg, chunk_size=8)
        parts.append(y)
        lo = hi
    assert_close(torch.cat(parts, 1), y_full, **TOL)
    assert_close(S, S_full, **TOL)


def test_strong_decay_stays_finite_and_exact() -> None:
    # dt * A down to about -60 per token: decays underflow towards 0 inside a chunk.
    inp = make_inputs(40, G=1, seed=9, dt_scale=30.0)
    y_ref, S_ref, g_ref = run(naive_ssd, inp)
    y, S, g = run(chunk_ssd, inp, chunk_size=16)
    assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in g)
    assert_close(y, y_ref, **TOL)
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b, **TOL)


def test_float32_inputs_run_in_float32_and_match() -> None:
    inp = {k: (v.detach().float() if v is not None else None) for k, v in make_inputs(64).items()}
    y_ref, S_ref = naive_ssd(**inp)
    y, S = chunk_ssd(**inp, chunk_size=16)
    assert y.dtype == torch.float32 and S.dtype == torch.float32
    assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    assert_close(S, S_ref, rtol=1e-4, atol=1e-4)


def test_bfloat16_inputs_scan_in_float32() -> None:
    inp = {k: (v.detach().float() if v is not None else None) for k, v in make_inputs(20).items()}
    inp["x"] = inp["x"].bfloat16()
    y, S = chunk_ssd(**inp, chunk_size=8)
    assert y.dtype == torch.bfloat16 and S.dtype == torch.float32
    y_ref, S_ref = naive_ssd(**{**inp, "x": inp["x"].float()})  # same values, float32 all along
    assert_close(S, S_ref, rtol=1e-4, atol=1e-4)
    assert_close(y.float(), y_ref, rtol=1e-2, atol=1e-2)  # only the final cast rounds to bf16


@pytest.mark.parametrize(
    "change, match",
    [
        ({"dt": torch.rand(2, 9, 3)}, "dt must be"),
        ({"A": torch.rand(3)}, "A must be"),
        ({"B": torch.rand(2, 9, 3, 5), "C": torch.rand(2, 9, 3, 5)}, "multiple of the groups"),
        ({"C": torch.rand(2, 9, 2, 4)}, "B and C must both be"),
        ({"D": torch.rand(2)}, "D must be"),
        ({"initial_state": torch.rand(2, 4, 3, 4)}, "initial_state must be"),
    ],
)
def test_bad_inputs_name_the_argument(change: dict, match: str) -> None:
    inp = {k: (v.detach() if v is not None else None) for k, v in make_inputs(9).items()}
    inp.update(change)
    for fn in (naive_ssd, chunk_ssd):
        with pytest.raises(ValueError, match=match):
            fn(**inp)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_ssd(**{k: (v.detach() if v is not None else None) for k, v in make_inputs(9).items()},
                  chunk_size=0)  # fmt: skip
