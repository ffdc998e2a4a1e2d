"""Pure step functions against closed forms, autograd and independent reference loops."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nestlearn.optim import (
    M3,
    DeltaGD,
    deep_momentum_update,
    delta_momentum_update,
    muon_lr_scale,
    newton_schulz,
)
from nestlearn.optim.deep_momentum import DeepMomentumState
from nestlearn.optim.newton_schulz import newton_schulz_many

F64 = torch.float64


def test_newton_schulz_float64_flattens_the_spectrum() -> None:
    """5 quintic steps map every singular value of a well-spread matrix into Muon's band
    (about 0.68-1.13 for Keller's coefficients) and keep the singular vectors."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(7, 7, generator=g, dtype=F64))
    s = torch.logspace(-1, 1, 7, dtype=F64)  # condition number 100
    x = u[:, :7] @ torch.diag(s) @ v.T
    y = newton_schulz(x, 5)
    sy = torch.linalg.svdvals(y)
    assert sy.min() > 0.6 and sy.max() < 1.2
    # Same singular vectors: y = u diag(p(s)) v^T for an odd polynomial p.
    p_s = torch.diag(u[:, :7].T @ y @ v)
    torch.testing.assert_close(u[:, :7] @ torch.diag(p_s) @ v.T, y, rtol=1e-10, atol=1e-10)


def test_newton_schulz_batched_equals_loop_and_transposes() -> None:
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(5, 8, generator=g, dtype=F64) for _ in range(3)] + [
        torch.randn(9, 4, generator=g, dtype=F64)
    ]
    loop = newton_schulz_many(xs, 5, batched=False)
    batched = newton_schulz_many(xs, 5, batched=True)
    for a, b in zip(loop, batched):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(newton_schulz(xs[3], 5), newton_schulz(xs[3].T, 5).T)
    assert newton_schulz(xs[0], 0) is xs[0]


def test_muon_lr_scale_matches_torch_rules() -> None:
    assert muon_lr_scale((8, 2), None) == pytest.approx(2.0)
    assert muon_lr_scale((2, 8), "original") == 1.0
    assert muon_lr_scale((16, 64), "match_rms_adamw") == pytest.approx(0.2 * 8.0)
    assert muon_lr_scale((16, 64), "none") == 1.0


@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (5,)])
@pytest.mark.parametrize("normalize", [True, False])
def test_delta_momentum_step_is_eq49(shape: tuple[int, ...], normalize: bool) -> None:
    """b' = b (mu I - decay k^T k) + g with an explicit identity matrix."""
    g = torch.Generator().manual_seed(2)
    grad = torch.randn(shape, generator=g, dtype=F64)
    buf = torch.randn(shape, generator=g, dtype=F64)
    mu, decay = 0.9, 0.3
    d, new = delta_momentum_update(grad, buf, momentum=mu, decay=decay, normalize=normalize)
    gm, bm = grad.reshape(-1, shape[-1]), buf.reshape(-1, shape[-1])
    k = gm / gm.norm() if normalize else gm
    expected = bm @ (mu * torch.eye(shape[-1], dtype=F64) - decay * k.T @ k) + gm
    torch.testing.assert_close(new, expected.reshape(shape), rtol=1e-13, atol=1e-13)
    assert d is new


def test_delta_momentum_normalised_decay_is_contractive_along_the_gradient() -> None:
    """With k = g/|g| and a rank-1 gradient, the buffer's component along g shrinks by
    (mu - decay) while orthogonal components shrink by mu."""
    row = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    buf = torch.tensor([[2.0, 3.0, 0.0]], dtype=F64)
    _, new = delta_momentum_update(3.0 * row, buf, momentum=0.9, decay=0.5, normalize=True)
    torch.testing.assert_close(new, torch.tensor([[2.0 * 0.4 + 3.0, 3.0 * 0.9, 0.0]], dtype=F64))


@pytest.mark.parametrize("objective", ["dot", "l2"])
def test_deep_momentum_inner_gradients_match_autograd(objective: str) -> None:
    """The hand-written gradients of the inner objective equal autograd's."""
    g = torch.Generator().manual_seed(3)
    rows, cols, hidden = 5, 7, 4
    u = torch.randn(rows, cols, generator=g, dtype=F64)
    m = torch.randn(rows, cols, generator=g, dtype=F64)
    w1 = torch.randn(cols, hidden, generator=g, dtype=F64)
    w2 = torch.randn(hidden, cols, generator=g, dtype=F64)
    mu, inner_lr, key_lr = 0.9, 0.3, 0.05
    d, new = deep_momentum_update(u, DeepMomentumState(m, w1, w2), momentum=mu,
                                  objective=objective, inner_lr=inner_lr, key_lr=key_lr)  # fmt: skip
    params = [t.clone().requires_grad_(True) for t in (m, w1, w2)]
    k = u / u.norm(dim=-1, keepdim=True)
    out = params[0] + torch.tanh(k @ params[1]) @ params[2]
    loss = -(out * u).sum() if objective == "dot" else 0.5 * ((out - u) ** 2).sum()
    gm, gw1, gw2 = torch.autograd.grad(loss, params)
    torch.testing.assert_close(new.m, mu * m - inner_lr * gm, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new.w2, mu * w2 - inner_lr * gw2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new.w1, w1 - key_lr * gw1 / gw1.norm(), rtol=1e-12, atol=1e-12)
    expected = new.m + torch.tanh(k @ new.w1) @ new.w2
    torch.testing.assert_close(d, expected, rtol=1e-12, atol=1e-12)


def test_delta_gd_step_is_the_closed_form_argmin_of_eq56() -> None:
    """One unit-norm input: W_{t+1} = argmin_W 1/2|W x - u|^2 + 1/(2 eta)|W - W_t|^2 with
    u = -dL/dy, solved with a linear solve, equals the optimizer's eq. 57 step."""
    torch.manual_seed(4)
    layer = nn.Linear(6, 3, bias=False).double()
    x = torch.randn(1, 6, dtype=F64)
    x = x / x.norm()
    target = torch.randn(1, 3, dtype=F64)
    eta = 0.7
    opt = DeltaGD(layer.parameters(), modules=layer, lr=eta)
    w0 = layer.weight.detach().clone()
    y = layer(x)
    loss = 0.5 * ((y - target) ** 2).sum()
    (dy,) = torch.autograd.grad(loss, y, retain_graph=True)
    loss.backward()
    opt.step()
    u = -dy  # [1, 3]
    # Stationarity: (W x - u) x^T + (W - W0)/eta = 0  =>  W (x x^T + I/eta) = u x^T + W0/eta
    lhs = x.T @ x + torch.eye(6, dtype=F64) / eta
    rhs = u.T @ x + w0 / eta
    w_star = torch.linalg.solve(lhs.T, rhs.T).T
    torch.testing.assert_close(layer.weight.detach(), w_star, rtol=1e-12, atol=1e-12)


def test_delta_gd_batch_uses_mean_normalised_input_covariance() -> None:
    torch.manual_seed(5)
    layer = nn.Linear(4, 2, bias=True).double()
    opt = DeltaGD(layer.parameters(), modules=layer, lr=0.1, decay=0.2)
    assert [g["use_fallback"] for g in opt.param_groups] == [False, True]  # bias -> AdamW
    x = torch.randn(8, 4, dtype=F64) * 3.0
    w0 = layer.weight.detach().clone()
    layer(x).pow(2).sum().backward()
    grad = layer.weight.grad.clone()
    opt.step()
    xh = x / x.norm(dim=-1, keepdim=True)
    expected = w0 - 0.2 * w0 @ (xh.T @ xh / 8) - 0.1 * grad
    torch.testing.assert_close(layer.weight.detach(), expected, rtol=1e-12, atol=1e-12)
    # No training forward before the next step: a loud error, not a silent SGD step.
    layer.weight.grad = torch.ones_like(layer.weight)
    with pytest.raises(RuntimeError, match="no recorded inputs"):
        opt.step()
    # Forwards without grad (evaluation) are not recorded.
    with torch.no_grad():
        layer(x)
    with pytest.raises(RuntimeError, match="no recorded inputs"):
        opt.step()


def _ns(x: torch.Tensor) -> torch.Tensor:
    return newton_schulz(x, 5)


def test_m3_literal_follows_algorithm_1() -> None:
    """An independent transcription of Algorithm 1 (running sums, f-step slow memory)."""
    torch.manual_seed(6)
    w = nn.Parameter(torch.randn(4, 6, dtype=F64))
    lr, (b1, b2, b3), alpha, f, eps = 1e-3, (0.9, 0.99, 0.5), 0.7, 3, 1e-8
    opt = M3([w], lr, (b1, b2, b3), alpha, f, eps, variant="literal")
    ref = w.detach().clone()
    m1, v, m2, o2 = (torch.zeros_like(ref) for _ in range(4))
    grads = [torch.randn(4, 6, dtype=F64) for _ in range(10)]
    for t, g in enumerate(grads, start=1):
        w.grad = g.clone()
        opt.step()
        m1 = m1 + b1 * g
        v = v + b2 * g * g
        ref = ref - lr * (_ns(m1) + alpha * o2) / (v.sqrt() + eps)
        if t % f == 0:  # the slow memory folds in the block's f gradients after step t
            m2 = m2 + b3 * sum(grads[t - f : t])
            o2 = _ns(m2)
        torch.testing.assert_close(w.detach(), ref, rtol=1e-12, atol=1e-12)


def test_m3_stabilised_slow_memory_updates_every_f_steps() -> None:
    torch.manual_seed(7)
    w = nn.Parameter(torch.randn(5, 3, dtype=F64))
    f = 4
    opt = M3([w], 0.01, (0.9, 0.95, 0.5), 0.5, f)
    grads = [torch.randn(5, 3, dtype=F64) for _ in range(9)]
    seen = []
    for g in grads:
        w.grad = g
        opt.step()
        seen.append(opt.state[w]["o2"].clone())
    assert all(torch.count_nonzero(o) == 0 for o in seen[: f - 1])
    assert torch.equal(seen[f], seen[2 * f - 2]) and not torch.equal(seen[f - 1], seen[2 * f - 1])
    # The slow memory after the first block: (1 - b3) * mean of the first f gradients.
    torch.testing.assert_close(
        opt.state[w]["m2"],
        0.5 * (0.5 * sum(grads[:f]) / f) + 0.5 * sum(grads[f : 2 * f]) / f,
    )
    # A stabilised step is bounded like Muon's: spectral norm <= (1 + alpha) 1.2 lr s.
    before = w.detach().clone()
    w.grad = 1e-6 * torch.randn(5, 3, dtype=F64)
    opt.step()
    step_norm = torch.linalg.matrix_norm(w.detach() - before, ord=2).item()
    assert step_norm < (1 + 0.5) * 1.2 * 0.01 * math.sqrt(5 / 3)
