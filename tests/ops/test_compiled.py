"""Compiled chunk steps (``nestlearn.ops.compiled``) == the eager ops, forward and backward.

Each op's per-chunk body is compiled once with ``torch.compile`` (inductor, C++ on the CPU) and
replayed for every chunk. The compiled step must give the eager op's outputs, final states and
gradients to float32 rounding, and must actually be used (the compile cache gains an entry).
Compiling costs tens of seconds per variant on 2 cores, so the default suite compiles the Hope
configuration of the Titans MLP step and the CMS step; the projection step and the other
configurations are ``slow``.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from nestlearn.ops import compiled
from nestlearn.ops.cms import CMSLevelState, chunk_cms_level
from nestlearn.ops.selfmod import SelfModState, chunk_selfmod_titans
from nestlearn.ops.titans import TitansState, chunk_titans

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile on the CPU needs a C++ compiler",
)
TOL = {"rtol": 2e-4, "atol": 2e-5}


def _grads(out: torch.Tensor, wrt: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    gy = torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)
    return torch.autograd.grad((out * gy).sum(), wrt, allow_unused=True)


def _both(fn, wrt, max_graphs: int = 1):
    """``fn()`` eager and compiled; returns both results and both gradient lists.

    The compiled calls may trace at most ``max_graphs`` new graphs (one per step function): the
    first chunk, whose state is the initial one (expanded weights, zero momentum without a
    gradient, no CMS sum yet), must replay the later chunks' graph, not add its own (Hope's cold
    compile paid for five such extra graphs, forward and backward)."""
    compiled.disable()
    ref = fn()
    g_ref = _grads(ref[0], wrt)
    before = compiled.handed_out
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with compiled.chunk_compile():
        got = fn()
        g_got = _grads(got[0], wrt)
        got2 = fn()  # a second call reuses the compiled step
    assert compiled.handed_out > before, "no compiled step was used"
    new = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs
    assert new <= max_graphs, f"{new} graphs traced for {max_graphs} step function(s)"
    torch.testing.assert_close(got2[0], got[0], rtol=0, atol=0)
    assert compiled.enabled_mode() is None  # the context restores eager
    return ref, got, g_ref, g_got


def _titans_case(hope_like: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, T, H, D, Dh = 2, 48, 2, 8, 16

    def rn(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).requires_grad_()

    q, k, v = (torch.nn.functional.normalize(rn(B, T, H, D), dim=-1) for _ in range(3))
    theta = (torch.rand(B, T, H, generator=g) * 0.5).requires_grad_()
    eta = (0.5 + 0.4 * torch.rand(B, T, H, generator=g)).requires_grad_()
    alpha = (torch.rand(B, T, H, generator=g) * 0.05).requires_grad_()
    W = (rn(B, H, Dh, D, scale=0.3), rn(B, H, D, Dh, scale=0.3))
    prior = tuple(w.detach().clone().requires_grad_() for w in W)
    st = TitansState(W, None, None, 0)
    kw = dict(chunk_size=16, exact_output=True, hidden_chunk=True, hidden_prior=prior,
              recompute_group=2)  # fmt: skip
    if hope_like:
        kw.update(optimizer="dgd", read="before", self_target=True)
    wrt = [q, k, v, theta, eta, alpha, *W, *prior]

    def run():
        y, s = chunk_titans(q, k, v, theta, eta, alpha, st, **kw)
        return y, s

    return run, wrt


@pytest.mark.parametrize(
    "hope_like",
    [pytest.param(True, id="hope"), pytest.param(False, id="titans", marks=pytest.mark.slow)],
)
def test_titans_mlp_step_compiled_equals_eager(hope_like):
    run, wrt = _titans_case(hope_like)
    ref, got, g_ref, g_got = _both(run, wrt)
    torch.testing.assert_close(got[0], ref[0], **TOL)
    for a, b in zip(got[1].weights + got[1].momentum, ref[1].weights + ref[1].momentum):
        torch.testing.assert_close(a, b, **TOL)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.slow
def test_selfmod_proj_step_compiled_equals_eager():
    g = torch.Generator().manual_seed(1)
    B, T, H, Fd, Hd, names = 2, 64, 2, 8, 8, ("k", "v", "eta", "alpha")
    n = len(names)

    def rn(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).requires_grad_()

    def mem(heads):
        w = (rn(B, heads, Hd, Fd, scale=0.4), rn(B, heads, Fd, Hd, scale=0.4))
        return TitansState(w, tuple(torch.zeros_like(t) for t in w))

    x = rn(B, T, H, Fd, scale=0.5)
    q = torch.nn.functional.normalize(rn(B, T, H, Fd), dim=-1)  # Hope's q is a fixed projection
    st = SelfModState(mem(n * H), mem(H))
    mom = (0.3 + 0.6 * torch.rand(B, T, H, generator=g)).requires_grad_()
    er, ar = (rn(H, Fd, scale=0.5), rn(H)), (rn(H, Fd, scale=0.5), rn(H, scale=0.1) - 2.0)
    wrt = [x, q, mom, *er, *ar, *st.proj.weights, *st.memory.weights]

    def run():
        return chunk_selfmod_titans(
            x, st, names=names, eta_readout=er, alpha_readout=ar, q=q, momentum=mom, chunk_size=8,
            proj_chunk_size=16, max_lr=0.5, exact_output=True, hidden_chunk=True,
            proj_lr_scale=0.1, recompute_group=2,
        )  # fmt: skip

    ref, got, g_ref, g_got = _both(run, wrt, max_graphs=2)  # projection and main steps
    torch.testing.assert_close(got[0], ref[0], **TOL)
    for a, b in zip(got[1].proj.weights + got[1].memory.weights,
                    ref[1].proj.weights + ref[1].memory.weights):  # fmt: skip
        torch.testing.assert_close(a, b, **TOL)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize(
    "first_order", [pytest.param(False, id="full"), pytest.param(True, id="first-order",
                                                                  marks=pytest.mark.slow)]
)
def test_cms_step_compiled_equals_eager(first_order):
    g = torch.Generator().manual_seed(2)
    B, T, D, H, C = 2, 40, 8, 12, 8
    x = (torch.randn(B, T, D, generator=g) * 0.5).requires_grad_()
    w_in = (torch.randn(2 * H, D, generator=g) * 0.3).requires_grad_()
    w_out = (torch.randn(D, H, generator=g) * 0.3).requires_grad_()
    lr = torch.tensor(0.1, requires_grad=True)
    st = CMSLevelState(None, None, None, None, None, 0)
    wrt = [x, w_in, w_out, lr]

    def run():
        return chunk_cms_level(
            x, w_in, w_out, lr, st, period=C, first_order=first_order, output_final_state=True,
            retention=0.1,
        )  # fmt: skip

    ref, got, g_ref, g_got = _both(run, wrt)
    torch.testing.assert_close(got[0], ref[0], **TOL)
    for a, b in zip(got[1].delta, ref[1].delta):
        torch.testing.assert_close(a, b, **TOL)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, **TOL)


def test_enable_refuses_an_unknown_mode_and_restores_eager():
    with pytest.raises(ValueError, match="reduce-overhead"):
        compiled.enable("fast")
    assert compiled.enabled_mode() is None
    f = compiled.chunk_step(_grads)
    assert f is _grads  # off: the eager function itself
