"""Chunked Titans op vs its naive references, in float64, forward and backward.

Contracts under test (see ``src/nestlearn/ops/titans/README.md``):
  * chunk_titans == naive_chunk_titans at any chunk size, for outputs, final state and the gradients
    of every input (q, k, v, theta, eta, alpha, initial weights, momentum, anchor);
  * chunk size 1 == the per-token recurrence;
  * linear memory + GD == the closed-form delta rule (per token) and the closed-form mini-batch
    update (per chunk);
  * threading the state through any split (mid-chunk too, and token-by-token decode) == one call.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from nestlearn.ops.titans import (
    TitansState,
    chunk_titans,
    memory_forward,
    naive_chunk_titans,
    naive_recurrent_titans,
)

DT = torch.float64
B, H, D, DH = 2, 2, 4, 6
TOL = {"rtol": 1e-9, "atol": 1e-11}

MEMORIES = {"linear": [(D, D)], "mlp2": [(DH, D), (D, DH)], "mlp3": [(DH, D), (DH, DH), (D, DH)]}


def make_inputs(T: int, memory: str, momentum: bool, forget: bool = True, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def rn(*s: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*s, generator=g, dtype=DT) * scale).requires_grad_()

    def unit(*s: int) -> torch.Tensor:
        x = torch.randn(*s, generator=g, dtype=DT)
        return (x / x.norm(dim=-1, keepdim=True)).requires_grad_()

    def gate(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(B, T, H, generator=g, dtype=DT)).requires_grad_()

    shapes = MEMORIES[memory]
    weights = tuple(rn(B, H, o, i, scale=0.4) for o, i in shapes)
    mom = tuple(rn(B, H, o, i, scale=0.1) for o, i in shapes) if momentum else None
    return {
        "q": unit(B, T, H, D),
        "k": unit(B, T, H, D),
        "v": rn(B, T, H, D),
        "theta": gate(0.02, 0.2),
        "eta": gate(0.2, 0.9) if momentum else None,
        "alpha": gate(0.0, 0.2) if forget else None,
        "initial_state": TitansState(weights, mom),
    }


def leaves(inp: dict) -> list[torch.Tensor]:
    st = inp["initial_state"]
    out = [inp[n] for n in ("q", "k", "v", "theta", "eta", "alpha") if inp[n] is not None]
    out += list(st.weights) + list(st.momentum or ()) + list(st.anchor or ())
    return out


def scalar_loss(y: torch.Tensor, st: TitansState, seed: int = 1) -> torch.Tensor:
    """Random cotangents on the output and on every final-state tensor."""
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=DT)).sum()
    for t in list(st.weights) + list(st.momentum or ()):
        loss = loss + (t * torch.randn(t.shape, generator=g, dtype=DT)).sum()
    return loss


def run(fn, inp: dict, **kw) -> tuple[torch.Tensor, TitansState, list[torch.Tensor]]:
    y, st = fn(**inp, **kw)
    grads = torch.autograd.grad(scalar_loss(y, st), leaves(inp), allow_unused=True)
    return y, st, list(grads)


def assert_states_close(a: TitansState, b: TitansState) -> None:
    assert a.offset == b.offset
    for x, y in zip(a.weights, b.weights, strict=True):
        assert_close(x, y, **TOL)
    assert (a.momentum is None) == (b.momentum is None)
    for x, y in zip(a.momentum or (), b.momentum or (), strict=True):
        assert_close(x, y, **TOL)
    assert (a.anchor is None) == (b.anchor is None)
    for x, y in zip(a.anchor or (), b.anchor or (), strict=True):
        assert_close(x, y, **TOL)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 16])
@pytest.mark.parametrize("optimizer", ["gd", "dgd"])
@pytest.mark.parametrize("momentum", [False, True], ids=["nomom", "mom"])
@pytest.mark.parametrize("memory", ["linear", "mlp2"])
def test_chunk_equals_naive_chunk_fwd_bwd(
    memory: str, momentum: bool, optimizer: str, chunk_size: int
) -> None:
    inp = make_inputs(37, memory, momentum)  # 37 is not a multiple of 3, 4 or 16
    kw = {"chunk_size": chunk_size, "optimizer": optimizer}
    y_ref, st_ref, g_ref = run(naive_chunk_titans, inp, **kw)
    y, st, g = run(chunk_titans, inp, **kw)
    assert_close(y, y_ref, **TOL)
    assert_states_close(st, st_ref)
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b, **TOL)


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
def test_mlp3_activations_no_forget(activation: str) -> None:
    """Depth 3, each activation, no forget gate, DGD with momentum: fwd and bwd."""
    inp = make_inputs(21, "mlp3", momentum=True, forget=False, seed=3)
    kw = {"chunk_size": 8, "optimizer": "dgd", "activation": activation}
    y_ref, st_ref, g_ref = run(naive_chunk_titans, inp, **kw)
    y, st, g = run(chunk_titans, inp, **kw)
    assert_close(y, y_ref, **TOL)
    assert_states_close(st, st_ref)
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b, **TOL)


@pytest.mark.parametrize("optimizer", ["gd", "dgd"])
@pytest.mark.parametrize("memory", ["linear", "mlp2"])
def test_chunk_size_one_equals_recurrence(memory: str, optimizer: str) -> None:
    inp = make_inputs(19, memory, momentum=True)
    y_ref, st_ref, g_ref = run(naive_recurrent_titans, inp, optimizer=optimizer)
    y, st, g = run(chunk_titans, inp, chunk_size=1, optimizer=optimizer)
    assert_close(y, y_ref, **TOL)
    assert_states_close(st, st_ref)
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b, **TOL)


@pytest.mark.parametrize("chunk_size", [1, 4, 16])
@pytest.mark.parametrize("memory", ["linear", "mlp2"])
def test_read_before_update_fwd_bwd(memory: str, chunk_size: int) -> None:
    """read="before" (NL eq. 86: y_t = M_{t-1}(q_t)) against the reference, DGD + momentum."""
    inp = make_inputs(37, memory, momentum=True, seed=4)
    kw = {"chunk_size": chunk_size, "optimizer": "dgd", "read": "before"}
    y_ref, st_ref, g_ref = run(naive_chunk_titans, inp, **kw)
    y, st, g = run(chunk_titans, inp, **kw)
    assert_close(y, y_ref, **TOL)
    assert_states_close(st, st_ref)
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b, **TOL)
    if chunk_size == 1:
        y_rec, _ = naive_recurrent_titans(**inp, optimizer="dgd", read="before")
        assert_close(y, y_rec.detach(), **TOL)
    # the first token reads the initial memory untouched
    with torch.no_grad():
        st0 = inp["initial_state"]
        y0 = memory_forward(st0.weights, inp["q"][:, 0], "silu")
    assert_close(y[:, 0].detach(), y0, **TOL)


def test_linear_gd_is_delta_rule() -> None:
    """Per token: M_t = M_{t-1}(I - b_t k k^T) + b_t v k^T with b_t = 2 theta_t, y_t = M_t q_t."""
    inp = make_inputs(23, "linear", momentum=False, forget=False)
    q, k, v, th = (inp[n].detach() for n in ("q", "k", "v", "theta"))
    M = inp["initial_state"].weights[0].detach()
    ys = []
    eye = torch.eye(D, dtype=DT)
    for t in range(q.shape[1]):
        kt, vt, b = k[:, t], v[:, t], 2.0 * th[:, t, :, None, None]
        M = (
            M @ (eye - b * kt[..., :, None] * kt[..., None, :])
            + b * vt[..., :, None] * kt[..., None, :]
        )
        ys.append((M @ q[:, t, ..., None]).squeeze(-1))
    y_ref = torch.stack(ys, dim=1)
    with torch.no_grad():
        y, st = chunk_titans(**inp, chunk_size=1)
    assert_close(y, y_ref, **TOL)
    assert_close(st.weights[0], M, **TOL)


def test_linear_chunked_gd_is_minibatch_closed_form() -> None:
    """Per chunk, gradients at the chunk start: M' = M (I - K^T diag(b) K) + V^T diag(b) K."""
    C, T = 5, 23
    inp = make_inputs(T, "linear", momentum=False, forget=False, seed=7)
    q, k, v, th = (inp[n].detach() for n in ("q", "k", "v", "theta"))
    M = inp["initial_state"].weights[0].detach()
    for c0 in range(0, T, C):
        Kc = k[:, c0 : c0 + C].transpose(1, 2)  # [B, H, C, D]
        Vc = v[:, c0 : c0 + C].transpose(1, 2)
        bc = 2.0 * th[:, c0 : c0 + C].transpose(1, 2).unsqueeze(-1)  # [B, H, C, 1]
        M = M - M @ Kc.mT @ (bc * Kc) + (bc * Vc).mT @ Kc
    with torch.no_grad():
        _, st = chunk_titans(**inp, chunk_size=C)
    assert_close(st.weights[0], M, **TOL)


@pytest.mark.parametrize("memory", ["linear", "mlp2"])
def test_state_threading_any_split_and_decode(memory: str) -> None:
    """One call == segments split anywhere (mid-chunk too) == prefill + token-by-token decode."""
    T, C = 29, 8
    inp = make_inputs(T, memory, momentum=True, seed=11)
    kw = {"chunk_size": C, "optimizer": "dgd"}
    with torch.no_grad():
        y_full, st_full = chunk_titans(**inp, **kw)
        for cuts in ([8, 16, 24], [5, 13, 14, 27], [11]):
            bounds = [0, *cuts, T]
            st, ys = inp["initial_state"], []
            for a, b in zip(bounds[:-1], bounds[1:]):
                seg = {
                    n: (inp[n][:, a:b] if inp[n] is not None else None)
                    for n in ("q", "k", "v", "theta", "eta", "alpha")
                }
                y, st = chunk_titans(**seg, initial_state=st, **kw)
                ys.append(y)
            assert_close(torch.cat(ys, dim=1), y_full, **TOL)
            assert_states_close(st, st_full)
        # prefill 10 tokens, then decode one by one
        st, ys = inp["initial_state"], []
        for a, b in [(0, 10)] + [(t, t + 1) for t in range(10, T)]:
            seg = {
                n: (inp[n][:, a:b] if inp[n] is not None else None)
                for n in ("q", "k", "v", "theta", "eta", "alpha")
            }
            y, st = chunk_titans(**seg, initial_state=st, **kw)
            ys.append(y)
        assert_close(torch.cat(ys, dim=1), y_full, **TOL)
        assert_states_close(st, st_full)


def test_gradients_through_a_mid_chunk_state() -> None:
    """A state with offset > 0 (anchor set): gradients of its anchor, weights and momentum match."""
    inp = make_inputs(13, "mlp2", momentum=True, seed=5)
    with torch.no_grad():
        _, st0 = naive_chunk_titans(**make_inputs(5, "mlp2", momentum=True, seed=6), chunk_size=8)
    assert st0.offset == 5 and st0.anchor is not None
    st0 = TitansState(
        *(tuple(t.clone().requires_grad_() for t in ts) for ts in st0[:3]), st0.offset
    )
    inp["initial_state"] = st0
    y_ref, st_ref, g_ref = run(naive_chunk_titans, inp, chunk_size=8, optimizer="dgd")
    y, st, g = run(chunk_titans, inp, chunk_size=8, optimizer="dgd")
    assert_close(y, y_ref, **TOL)
    assert_states_close(st, st_ref)
    assert all(x is not None for x in g)  # anchor, weights and momentum all get gradients
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b, **TOL)


@pytest.mark.parametrize("memory", ["linear", "mlp2"])
def test_gradcheck_tiny(memory: str) -> None:
    """Finite differences on the chunk op itself (not only agreement with the reference)."""
    g = torch.Generator().manual_seed(2)
    T, shapes = 5, MEMORIES[memory]
    q, k, v = (torch.randn(1, T, 1, D, generator=g, dtype=DT, requires_grad=True) for _ in range(3))
    th, et, al = (
        torch.rand(1, T, 1, generator=g, dtype=DT).mul(0.5).requires_grad_() for _ in range(3)
    )
    w = tuple(
        torch.randn(1, 1, o, i, generator=g, dtype=DT).mul(0.3).requires_grad_() for o, i in shapes
    )
    s = tuple(
        torch.randn(1, 1, o, i, generator=g, dtype=DT).mul(0.1).requires_grad_() for o, i in shapes
    )
    n = len(shapes)

    def f(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        st = TitansState(tuple(args[6 : 6 + n]), tuple(args[6 + n :]))
        y, fs = chunk_titans(*args[:6], st, chunk_size=2, optimizer="dgd")
        return (y, *fs.weights, *fs.momentum)

    assert torch.autograd.gradcheck(f, (q, k, v, th, et, al, *w, *s))


def test_low_precision_inputs_run_in_float32() -> None:
    inp = make_inputs(20, "mlp2", momentum=True)
    ref, _ = chunk_titans(**inp, chunk_size=8)
    low = {
        n: (x.detach().to(torch.bfloat16) if isinstance(x, torch.Tensor) else x)
        for n, x in inp.items()
    }
    y, st = chunk_titans(**low, chunk_size=8)
    assert y.dtype == torch.bfloat16 and st.weights[0].dtype == torch.float32
    assert_close(y.double(), ref.detach(), rtol=0.05, atol=0.05)


def test_zero_and_one_gates_are_finite() -> None:
    """alpha = 1 (forget everything) and eta = 0 give no NaN; values and gradients match the
    reference except d/d(gate) *at* those exact gates, which the log-space decays set to 0
    (documented; a sigmoid-bounded gate reaches 0 or 1 only where its own slope is 0)."""
    inp = make_inputs(12, "linear", momentum=True)
    with torch.no_grad():
        inp["alpha"][:, 3] = 1.0
        inp["eta"][:, 5] = 0.0
    y_ref, _, g_ref = run(naive_chunk_titans, inp, chunk_size=4)
    y, _, g = run(chunk_titans, inp, chunk_size=4)
    assert_close(y, y_ref, **TOL)
    names = ["q", "k", "v", "theta", "eta", "alpha"]
    for i, (a, b) in enumerate(zip(g, g_ref, strict=True)):
        assert torch.isfinite(a).all()
        if i < len(names) and names[i] == "eta":
            assert (a[:, 5] == 0).all()
            a, b = a[:, [t for t in range(12) if t != 5]], b[:, [t for t in range(12) if t != 5]]
        if i < len(names) and names[i] == "alpha":
            assert (a[:, 3] == 0).all()
            a, b = a[:, [t for t in range(12) if t != 3]], b[:, [t for t in range(12) if t != 3]]
        assert_close(a, b, **TOL)


def test_bad_inputs_name_the_fix() -> None:
    inp = make_inputs(6, "mlp2", momentum=False)
    with pytest.raises(ValueError, match="theta must be"):
        chunk_titans(**{**inp, "theta": inp["theta"][:, :3]})
    with pytest.raises(ValueError, match="offset"):
        chunk_titans(
            **{**inp, "initial_state": inp["initial_state"]._replace(offset=9)}, chunk_size=4
        )
    with pytest.raises(ValueError, match="eta is None"):
        st = inp["initial_state"]
        chunk_titans(**{**inp, "initial_state": st._replace(momentum=st.weights)})


def _mlp_square_inputs(T: int, seed: int) -> dict:
    """MLP memory with Dk == Dv (residual), as the self-target mode needs."""
    return make_inputs(T, "mlp2", momentum=True, seed=seed)


@pytest.mark.parametrize("chunk_size", [1, 4, 16])
@pytest.mark.parametrize("optimizer", ["gd", "dgd"])
def test_self_target_fwd_bwd(chunk_size: int, optimizer: str) -> None:
    """self_target (NL eq. 83: target = M_{W^g}(v)) against the reference, with reads before."""
    inp = _mlp_square_inputs(37, seed=21)
    kw = {"chunk_size": chunk_size, "optimizer": optimizer, "read": "before", "self_target": True}
    y_ref, st_ref, g_ref = run(naive_chunk_titans, inp, **kw)
    y, st, g = run(chunk_titans, inp, **kw)
    assert_close(y, y_ref, **TOL)
    assert_states_close(st, st_ref)
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b, **TOL)
    # it is a different computation from the plain target
    y_plain, _ = chunk_titans(**inp, chunk_size=chunk_size, optimizer=optimizer, read="before")
    assert (y_plain - y).abs().max() > 1e-3


def test_self_target_first_token_gradient_by_hand() -> None:
    """One token from a known state: the update is -theta grad ||M(k) - M(v)||^2 in M(k) only."""
    inp = _mlp_square_inputs(1, seed=22)
    inp["eta"], inp["alpha"] = None, None
    inp["initial_state"] = TitansState(inp["initial_state"].weights)
    with torch.no_grad():
        _, st = chunk_titans(**inp, chunk_size=4, self_target=True)
        W = [w.clone().requires_grad_() for w in inp["initial_state"].weights]
        k, v, th = inp["k"][:, 0], inp["v"][:, 0], inp["theta"][:, 0]
        target = memory_forward(W, v, "silu").detach()
    with torch.enable_grad():
        loss = (memory_forward(W, k, "silu") - target).pow(2).sum()
        grads = torch.autograd.grad(loss, W)
    for w0, gw, w1 in zip(inp["initial_state"].weights, grads, st.weights, strict=True):
        assert_close(w1, w0.detach() - th[..., None, None].detach() * gw, **TOL)


def test_update_only_matches_state_of_full_call() -> None:
    """q=None updates the memory exactly as a call with reads, and returns no output."""
    inp = _mlp_square_inputs(29, seed=23)
    for fn in (chunk_titans, naive_chunk_titans):
        with torch.no_grad():
            y_full, st_full = fn(**inp, chunk_size=8, optimizer="dgd", self_target=True)
            y_none, st_none = fn(
                **{**inp, "q": None}, chunk_size=8, optimizer="dgd", self_target=True
            )
        assert y_none is None and y_full is not None
        assert_states_close(st_none, st_full)
    lin = make_inputs(29, "linear", momentum=True, seed=24)
    with torch.no_grad():
        _, st_a = chunk_titans(**lin, chunk_size=8, optimizer="dgd")
        y_b, st_b = chunk_titans(**{**lin, "q": None}, chunk_size=8, optimizer="dgd")
    assert y_b is None
    assert_states_close(st_b, st_a)


def test_self_target_state_threading() -> None:
    """Segments split mid-chunk == one call, in the self-target mode."""
    T, C = 29, 8
    inp = _mlp_square_inputs(T, seed=25)
    kw = {"chunk_size": C, "optimizer": "dgd", "read": "before", "self_target": True}
    with torch.no_grad():
        y_full, st_full = chunk_titans(**inp, **kw)
        st, ys = inp["initial_state"], []
        for a, b in [(0, 5), (5, 13), (13, 14), (14, 29)]:
            seg = {
                n: (inp[n][:, a:b] if inp[n] is not None else None)
                for n in ("q", "k", "v", "theta", "eta", "alpha")
            }
            y, st = chunk_titans(**seg, initial_state=st, **kw)
            ys.append(y)
    assert_close(torch.cat(ys, dim=1), y_full, **TOL)
    assert_states_close(st, st_full)


def test_self_target_needs_mlp_memory() -> None:
    inp = make_inputs(5, "linear", momentum=False)
    with pytest.raises(ValueError, match="residual MLP memory"):
        chunk_titans(**inp, self_target=True)
