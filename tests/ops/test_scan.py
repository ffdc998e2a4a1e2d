"""Gated-scan helpers: decay matrices equal explicit products; chunked scan equals the loop."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from nestlearn.ops.scan import decay_matrix, exp_flush, log_gate, naive_gated_scan, segsum


def _products(a: torch.Tensor) -> torch.Tensor:
    C = a.shape[-1]
    D = torch.zeros(*a.shape, C, dtype=a.dtype)
    for t in range(C):
        for s in range(t + 1):
            D[..., t, s] = a[..., s + 1 : t + 1].prod(-1)
    return D


def test_decay_matrix_and_segsum_equal_products() -> None:
    a = torch.rand(3, 9, dtype=torch.float64) * 0.9 + 0.05
    ref = _products(a)
    assert_close(decay_matrix(torch.log(a)), ref, rtol=1e-13, atol=0)
    assert_close(torch.exp(segsum(torch.log(a))), ref, rtol=1e-13, atol=0)


def test_chunked_scan_equals_loop() -> None:
    """h = D x + beta h0 reproduces h_t = a_t h_{t-1} + x_t (the chunked form used by the ops)."""
    B, T, S = 2, 11, 5
    a = torch.rand(B, T, 1, dtype=torch.float64)
    x = torch.randn(B, T, S, dtype=torch.float64)
    h0 = torch.randn(B, S, dtype=torch.float64)
    h_ref, hT = naive_gated_scan(a, x, h0)
    la = log_gate(a[..., 0])
    h = decay_matrix(la) @ x + torch.exp(la.cumsum(-1)).unsqueeze(-1) * h0.unsqueeze(1)
    assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    assert_close(h[:, -1], hT, rtol=1e-12, atol=1e-12)


def test_zero_gate_is_finite_with_finite_gradients() -> None:
    a = torch.tensor([0.5, 0.0, 0.7, 1.0], requires_grad=True)
    D = decay_matrix(log_gate(a))
    assert_close(D, _products(a.detach()), rtol=1e-6, atol=1e-6)
    D.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_float32_flushes_tiny_decays_to_zero() -> None:
    x = torch.tensor([-10.0, -39.0, -41.0, -100.0])
    assert (exp_flush(x)[2:] == 0).all() and (exp_flush(x)[:2] > 0).all()
    assert (exp_flush(x.double()) > 0).all()  # float64 keeps them
