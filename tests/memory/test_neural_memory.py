"""NeuralMemory layer: per-sequence state, segment / decode equivalence, meta-learned init.

Run in float64 so the tolerances check logic, not rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from nestlearn.memory.neural_memory import NeuralMemory, NeuralMemoryState

TOL = {"rtol": 1e-9, "atol": 1e-10}
D, H, T, C = 32, 2, 37, 8

VARIANTS = {
    "mlp-gd": {"memory": "mlp"},
    "mlp3-dgd": {"memory": "mlp", "depth": 3, "optimizer": "dgd", "activation": "gelu"},
    "linear-nomom": {"memory": "linear", "momentum": False},
}


def make(variant: str, **kw) -> NeuralMemory:
    torch.manual_seed(0)
    m = NeuralMemory(D, H, **{"chunk_size": C, "max_lr": 0.1, **VARIANTS[variant], **kw}).double()
    with torch.no_grad():  # larger gate weights than the model init, so the gates vary per token
        m.wgates.weight.normal_(0.0, 0.3)
    return m


def inputs(B: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, D, generator=g, dtype=torch.float64)


def assert_state_close(a: NeuralMemoryState, b: NeuralMemoryState) -> None:
    assert a.inner is not None and b.inner is not None
    assert a.inner.offset == b.inner.offset
    for x, y in zip(a.inner.weights, b.inner.weights, strict=True):
        assert_close(x, y, **TOL)
    for x, y in zip(a.inner.momentum or (), b.inner.momentum or (), strict=True):
        assert_close(x, y, **TOL)
    assert_close(a.conv, b.conv, **TOL)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sequences_in_a_batch_are_independent(variant: str) -> None:
    m = make(variant)
    x = inputs()
    y, _ = m(x)
    x2 = x.clone()
    x2[1] += torch.randn_like(x2[1])
    y2, _ = m(x2)
    assert torch.equal(y[0], y2[0]) and torch.equal(y[2], y2[2])
    assert not torch.allclose(y[1], y2[1])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_one_call_equals_segments_with_threaded_state(variant: str) -> None:
    m = make(variant)
    x = inputs()
    with torch.no_grad():
        y_full, st_full = m(x, state=m.init_state(3, x.device, x.dtype))
        for cuts in ([8, 16, 32], [3, 20]):  # chunk-aligned, then arbitrary (mid-chunk)
            st, ys = m.init_state(3, x.device, x.dtype), []
            for a, b in zip([0, *cuts], [*cuts, T]):
                y, st = m(x[:, a:b], state=st)
                ys.append(y)
            assert_close(torch.cat(ys, dim=1), y_full, **TOL)
            assert_state_close(st, st_full)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prefill_then_token_decode_equals_one_call(variant: str) -> None:
    m = make(variant)
    x = inputs(B=2)
    with torch.no_grad():
        y_full, st_full = m(x, state=m.init_state(2, x.device, x.dtype))
        y, st = m(x[:, :13], state=m.init_state(2, x.device, x.dtype))
        ys = [y]
        for t in range(13, T):
            y, st = m(x[:, t : t + 1], state=st)
            ys.append(y)
    assert_close(torch.cat(ys, dim=1), y_full, **TOL)
    assert_state_close(st, st_full)


@pytest.mark.parametrize("variant", ["mlp-gd", "mlp3-dgd"])
def test_gradients_equal_the_reference_op_and_reach_the_initial_memory(variant: str) -> None:
    """Backprop through the unrolled inner updates: every parameter's gradient (the meta-learned
    M_0 included) equals the one through the naive per-token reference op."""
    x = inputs(B=2)
    grads = []
    for naive in (False, True):
        m = make(variant, naive=naive)
        y, _ = m(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    fast, ref = grads
    for n in ref:
        assert fast[n] is not None, n
        assert_close(fast[n], ref[n], **TOL, msg=lambda s, n=n: f"{n}: {s}")
    assert all(fast[n].abs().max() > 0 for n in fast if n.startswith("mem_init"))


def test_init_memory_gradient_matches_finite_differences() -> None:
    m = make("mlp-gd", chunk_size=4)
    x = inputs(B=1)[:, :9]
    w = m.mem_init[1]
    direction = torch.randn_like(w)

    def loss() -> torch.Tensor:
        y, _ = m(x)
        return (y**2).sum()

    loss().backward()
    analytic = (w.grad * direction).sum()
    eps = 1e-6
    with torch.no_grad():
        w += eps * direction
        up = loss()
        w -= 2 * eps * direction
        down = loss()
        w += eps * direction
    assert_close(analytic, (up - down) / (2 * eps), rtol=1e-6, atol=1e-8)


def test_state_detach_cuts_history() -> None:
    m = make("mlp-gd")
    _, st = m(inputs(B=1), state=m.init_state(1, torch.device("cpu"), torch.float64))
    assert st.inner is not None and st.inner.weights[0].grad_fn is not None
    d = st.detach()
    assert d.inner is not None and d.conv is not None
    assert all(t.grad_fn is None for t in (*d.inner.weights, *d.inner.momentum, d.conv))


def test_meta_device_build_then_reset_is_finite_and_deterministic() -> None:
    with torch.device("meta"):
        m = NeuralMemory(D, H)
    m = m.to_empty(device="cpu")
    m.reset_parameters()
    ref = NeuralMemory(D, H)
    for (n, p), (_, q) in zip(m.named_parameters(), ref.named_parameters(), strict=True):
        if n.startswith(("mem_init", "conv_weight", "gate_bias", "out_norm")):
            assert torch.isfinite(p).all() and torch.equal(p, q), n


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_default_gates_keep_the_inner_loop_stable(scale: float) -> None:
    """Default strong writes (max_lr = 1, exact output layer, chunk-level hidden layer) at chunk 64
    over 512 tokens, inputs up to 100x (float32): finite, the hidden layer keeps its row norms, and
    the output layer, a normalised delta rule, never outgrows the values it stores."""
    torch.manual_seed(0)
    m = NeuralMemory(D, H, chunk_size=64)
    x = scale * torch.randn(2, 512, D)
    with torch.no_grad():
        y, st = m(x, state=m.init_state(2, None, None))
        values = torch.nn.functional.silu(m.wqkv(x)).abs().max()
    assert torch.isfinite(y).all() and st.inner is not None
    w_in, w_out = st.inner.weights
    assert_close(w_in.norm(dim=-1), m.mem_init[0].norm(dim=-1).expand_as(w_in[..., 0]), rtol=1e-4,
                 atol=1e-5)  # fmt: skip
    assert w_out.abs().max() < values


def test_bad_config_names_the_fix() -> None:
    with pytest.raises(ValueError, match="divisible"):
        NeuralMemory(30, 4)
    with pytest.raises(ValueError, match="depth >= 2"):
        NeuralMemory(D, H, depth=1)
