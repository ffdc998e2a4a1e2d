"""The nested-memory op: one level from a MemorySpec, chunked vs the per-token autograd reference.

Contracts under test (``src/nestlearn/ops/nested/README.md``):

* ``chunk_nested == naive_nested`` for every point of the spec space tried here (each attentional
  bias, retention, algorithm, read mode, memory kind), float64, forward and backward (inputs,
  gates, initial parameters, LayerNorm affine), with a ragged length and a mid-chunk initial state;
* the known models are instances: Titans (LMM), Hope's M_memory, DeltaNet, TTT-Linear/MLP equal
  their dedicated ops (``nested_memory(backend='dedicated')``) to float64 tolerance, fwd and bwd;
* threading the state through any split equals one call;
* invalid combinations raise errors that name the value and the fix.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from nestlearn.ops.nested import (
    MemorySpec,
    NestedState,
    chunk_nested,
    dedicated_op,
    init_params,
    naive_nested,
    nested_memory,
    project,
)

DT = torch.float64
B, H, D = 2, 2, 4
TOL = {"rtol": 1e-9, "atol": 1e-10}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def make(spec: MemorySpec, T: int, seed: int = 0) -> tuple[dict, dict, list[torch.Tensor]]:
    """Inputs and gates (leaves), LayerNorm affine, and initial parameters (or accumulators)."""
    gen = torch.Generator().manual_seed(seed)

    def rn(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen, dtype=DT)

    def rand(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(B, T, H, generator=gen, dtype=DT)

    inp = {
        "q": F.normalize(rn(B, T, H, D), dim=-1),
        "k": F.normalize(rn(B, T, H, D), dim=-1),
        "v": rn(B, T, H, D),
        "lr": rand(0.0, 0.3),
    }
    if spec.retention != "none":
        inp["retain"] = rand(0.8, 1.0)
    if spec.momentum:
        inp["momentum"] = rand(0.0, 0.6)
    if spec.objective == "huber":
        inp["delta"] = rand(0.1, 1.1)
    kw = {}
    if spec.norm == "layernorm":
        kw = {"norm_weight": 1 + 0.1 * rn(H, D), "norm_bias": 0.1 * rn(H, D)}
    ps = [
        p.unsqueeze(0).expand(B, *p.shape) + 0.1 * rn(B, *p.shape)
        for p in init_params(spec, D, D, H, generator=gen)
    ]
    leaves = [t.requires_grad_() for t in (*inp.values(), *kw.values(), *ps)]
    del leaves
    return inp, kw, ps


def state_of(spec: MemorySpec, ps: list[torch.Tensor]) -> NestedState:
    """A chunk-boundary state whose parameters (or accumulators, for lq / kl) are ``ps``."""
    if spec.mirror:
        return NestedState(project(spec, ps), tuple(ps))
    return NestedState(tuple(ps))


def run(fn, spec, inp, kw, ps, state=None, **extra) -> list[torch.Tensor]:
    """Outputs, final parameters and the gradients of every leaf under random cotangents."""
    y, st = fn(spec, **inp, state=state if state is not None else state_of(spec, ps), **kw, **extra)
    gen = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=gen, dtype=DT)).sum()
    for p in st.params:
        loss = loss + (p * torch.randn(p.shape, generator=gen, dtype=DT)).sum()
    leaves = [*inp.values(), *kw.values(), *ps]
    return [y, *st.params, *torch.autograd.grad(loss, leaves, allow_unused=True)]


def assert_all_close(got: list, ref: list) -> None:
    for i, (a, b) in enumerate(zip(got, ref)):
        if a is None or b is None:
            assert a is None and b is None, i
            continue
        assert_close(a, b, **TOL, msg=lambda m, i=i: f"item {i}: {m}")


SPECS = {
    "matrix-l2-decay": MemorySpec(memory="matrix", chunk_size=4),
    "mlp-l2-momentum": MemorySpec(momentum=True, chunk_size=4),
    "mlp3-dot (DLA-like)": MemorySpec(objective="dot", depth=3, chunk_size=4),
    "mlp-lp-lq (Moneta)": MemorySpec(objective="lp", retention="lq", read="before",
                                     norm="layernorm", activation="gelu", chunk_size=4),
    "mlp-huber (Yaad)": MemorySpec(objective="huber", chunk_size=4),
    "mlp-kl (Memora)": MemorySpec(retention="kl", read="before", chunk_size=4),
    "mlp-dgd-self (Hope)": MemorySpec(algorithm="dgd", momentum=True, target="self",
                                      read="before", chunk_size=4),
    "vector-bias-momentum": MemorySpec(memory="vector", bias=True, momentum=True, chunk_size=4),
    "matrix-bias-ln (TTT)": MemorySpec(memory="matrix", bias=True, residual=True,
                                       norm="layernorm", scale=0.5, retention="none",
                                       chunk_size=4),
    "mlp-muon": MemorySpec(algorithm="muon", momentum=True, read="chunk", chunk_size=4),
    "mlp-update-every-chunk": MemorySpec(read="chunk", chunk_size=4),
    "mlp-lq-momentum-C1": MemorySpec(retention="lq", momentum=True, read="before", chunk_size=1),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SPECS))
def test_chunk_equals_naive_fwd_bwd(name: str) -> None:
    spec = SPECS[name]
    inp, kw, ps = make(spec, T=11)  # 11 = 2 full chunks + a ragged one
    assert_all_close(run(chunk_nested, spec, inp, kw, ps), run(naive_nested, spec, inp, kw, ps))


@pytest.mark.parametrize("name", ["mlp-l2-momentum", "mlp-lp-lq (Moneta)", "mlp-muon"])
def test_chunk_equals_naive_from_a_mid_chunk_state(name: str) -> None:
    """Start mid-chunk (offset 3 of 4): the first segment finishes that chunk at its anchor."""
    spec = SPECS[name]
    inp, kw, ps = make(spec, T=14, seed=3)
    with torch.no_grad():
        head = {n: t[:, :3] for n, t in inp.items()}
        _, mid = naive_nested(spec, **head, state=state_of(spec, ps), **kw)
    assert mid.offset == 3
    rest = {n: t[:, 3:].detach().requires_grad_() for n, t in inp.items()}
    got = run(chunk_nested, spec, rest, kw, [], state=mid)
    ref = run(naive_nested, spec, rest, kw, [], state=mid)
    assert_all_close(got, ref)


@pytest.mark.parametrize("name", ["mlp-l2-momentum", "mlp-kl (Memora)", "mlp-muon",
                                  "matrix-bias-ln (TTT)"])  # fmt: skip
def test_state_threading_equals_one_call(name: str) -> None:
    spec = SPECS[name]
    inp, kw, ps = make(spec, T=13, seed=2)
    inp = {n: t.detach() for n, t in inp.items()}
    with torch.no_grad():
        y_full, st_full = chunk_nested(spec, **inp, state=state_of(spec, ps), **kw)
        st, ys = state_of(spec, ps), []
        for a, b in [(0, 5), (5, 6), (6, 13)]:
            y, st = chunk_nested(spec, **{n: t[:, a:b] for n, t in inp.items()}, state=st, **kw)
            ys.append(y)
    assert_close(torch.cat(ys, 1), y_full, **TOL)
    for a, b in zip(st.params, st_full.params):
        assert_close(a, b, **TOL)


INSTANCES = {
    "titans-lmm": MemorySpec(momentum=True, chunk_size=4),
    "titans-linear": MemorySpec(memory="matrix", momentum=True, chunk_size=4),
    "hope-m-memory": MemorySpec(algorithm="dgd", momentum=True, target="self", read="before",
                                chunk_size=4),
    "deltanet": MemorySpec(memory="matrix", retention="none", scale=0.5, chunk_size=1),
    "ttt-linear": MemorySpec(memory="matrix", bias=True, residual=True, norm="layernorm",
                             scale=0.5, retention="none", chunk_size=4),
    "ttt-mlp": MemorySpec(activation="gelu_tanh", expansion=4, bias=True, norm="layernorm",
                          scale=0.5, retention="none", chunk_size=4),
}  # fmt: skip
OPS = {"titans-lmm": "titans", "titans-linear": "titans", "hope-m-memory": "titans",
       "deltanet": "delta_rule", "ttt-linear": "ttt", "ttt-mlp": "ttt"}  # fmt: skip


@pytest.mark.parametrize("name", list(INSTANCES))
def test_known_models_equal_their_dedicated_op(name: str) -> None:
    spec = INSTANCES[name]
    assert dedicated_op(spec) == OPS[name]
    inp, kw, ps = make(spec, T=11)
    got = run(nested_memory, spec, inp, kw, ps, backend="generic")
    ref = run(nested_memory, spec, inp, kw, ps, backend="dedicated")
    assert_all_close(got, ref)


def test_options_go_to_the_dedicated_op_and_the_generic_path_refuses_them() -> None:
    spec = MemorySpec(
        memory="matrix", retention="none", scale=0.5, chunk_size=1, options={"chunk_size": 8}
    )  # chunk_delta_rule's own (exact) chunking
    inp, kw, ps = make(spec, T=11)
    with torch.no_grad():
        y, _ = nested_memory(spec, **inp, state=state_of(spec, ps))
        plain = MemorySpec(memory="matrix", retention="none", scale=0.5, chunk_size=1)
        y_ref, _ = nested_memory(plain, **inp, state=state_of(plain, ps), backend="naive")
        assert_close(y, y_ref, **TOL)
        with pytest.raises(ValueError, match="dedicated op"):
            nested_memory(spec, **inp, state=state_of(spec, ps), backend="generic")


def test_kl_retention_is_memoras_softmax_of_log_weights() -> None:
    """MIRAS eq. 27, ``W_t = softmax(a_t log W_{t-1} - lr_t grad)``, written out directly, equals
    the op's logit accumulator (chunk_size=1, read before)."""
    spec = MemorySpec(memory="matrix", retention="kl", read="before", chunk_size=1)
    inp, _, ps = make(spec, T=6)
    inp = {n: t.detach() for n, t in inp.items()}
    with torch.no_grad():
        y, st = naive_nested(spec, **inp, state=state_of(spec, ps))
    W = torch.softmax(ps[0], -1)  # [B, H, Dv, Dk]
    for t in range(6):
        k, v = inp["k"][:, t], inp["v"][:, t]
        err = (W @ k.unsqueeze(-1)).squeeze(-1) - v
        grad = 2.0 * err.unsqueeze(-1) * k.unsqueeze(-2)
        a, lr = inp["retain"][:, t, :, None, None], inp["lr"][:, t, :, None, None]
        W = torch.softmax(a * W.log() - lr * grad, dim=-1)
    assert_close(st.params[0], W, **TOL)


def test_lq_retention_is_monetas_normalised_accumulator() -> None:
    """MIRAS eq. 24 at chunk_size=1: ``A_t = a_t A_{t-1} - lr_t grad_p(W_{t-1})``,
    ``W_t = A_t / ||A_t||_q^{q-2}``, with ``grad_p = p sign(e) |e|^{p-1} k^T``."""
    spec = MemorySpec(memory="matrix", objective="lp", p=3, retention="lq", q=4, read="before",
                      chunk_size=1)  # fmt: skip
    inp, _, ps = make(spec, T=6)
    inp = {n: t.detach() for n, t in inp.items()}
    with torch.no_grad():
        _, st = naive_nested(spec, **inp, state=state_of(spec, ps))

    def norm(a: torch.Tensor) -> torch.Tensor:
        return a / (a.abs().pow(4).sum((-2, -1), keepdim=True) + 1e-12).pow(0.5)

    A = ps[0]
    for t in range(6):
        k, v = inp["k"][:, t], inp["v"][:, t]
        e = (norm(A) @ k.unsqueeze(-1)).squeeze(-1) - v
        grad = (3.0 * e.sign() * e.abs().pow(2)).unsqueeze(-1) * k.unsqueeze(-2)
        A = inp["retain"][:, t, :, None, None] * A - inp["lr"][:, t, :, None, None] * grad
    assert_close(st.mirror[0], A, **TOL)
    assert_close(st.params[0], norm(A), **TOL)


@pytest.mark.parametrize("objective", ["l2", "lp", "huber", "dot"])
def test_each_objective_learns_its_associations(objective: str) -> None:
    """Writing the same 4 pairs again and again lowers the recall error (l2 / lp / huber) or raises
    the retrieved value's agreement with the target (dot): the memory learns, not only computes."""
    spec = MemorySpec(memory="matrix", objective=objective, retention="none", chunk_size=4)
    gen = torch.Generator().manual_seed(0)
    keys = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=DT))[0].T  # orthonormal
    vals = torch.randn(4, D, generator=gen, dtype=DT)
    reps = 20
    k = keys.repeat(reps, 1).view(1, 4 * reps, 1, D)
    v = vals.repeat(reps, 1).view(1, 4 * reps, 1, D)
    # huber's step is clipped to 2 delta lr per token, so it takes a larger rate to travel as far
    lr = torch.full((1, 4 * reps, 1), 0.2 if objective == "huber" else 0.05, dtype=DT)
    delta = torch.full_like(lr, 0.5) if objective == "huber" else None
    _, st = chunk_nested(spec, None, k, v, lr, delta=delta)
    W = st.params[0][0, 0]
    recalled = keys @ W.T
    if objective == "dot":
        cos = F.cosine_similarity(recalled, vals, dim=-1)
        assert cos.min() > 0.99
    else:
        assert (recalled - vals).norm() < 0.3 * vals.norm()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"target": "self", "memory": "matrix"}, "target='self' needs memory='mlp'"),
        ({"algorithm": "dgd", "memory": "vector"}, "use memory='matrix' or algorithm='gd'"),
        ({"algorithm": "dgd", "retention": "kl", "read": "before"}, "use retention='l2'"),
        ({"algorithm": "muon", "momentum": True}, "set read='chunk'"),
        ({"algorithm": "muon", "read": "chunk"}, "set momentum=True"),
        ({"retention": "lq"}, "use read='before'"),
        ({"retention": "kl", "bias": True, "read": "before"}, "set bias=False"),
        ({"memory": "matrix", "depth": 3}, "drop depth or use memory='mlp'"),
        ({"depth": 1}, "use memory='matrix'"),
        ({"objective": "lp", "p": 0.5}, "try 3"),
        ({"retention": "lq", "q": 2, "read": "before"}, "plain l2 retention"),
        ({"objective": "cosine"}, "objective='cosine' is not one of"),
    ],
)
def test_invalid_specs_name_the_value_and_the_fix(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MemorySpec(**kw)


def test_invalid_inputs_name_the_gate_and_the_fix() -> None:
    spec = MemorySpec(retention="none", chunk_size=4)
    inp, _, _ = make(MemorySpec(chunk_size=4), T=5)
    inp = {n: t.detach() for n, t in inp.items()}
    with pytest.raises(ValueError, match="drop retain or set retention='l2'"):
        chunk_nested(spec, **inp)
    with pytest.raises(ValueError, match="momentum .* is required"):
        chunk_nested(MemorySpec(momentum=True, chunk_size=4), **inp)
    with pytest.raises(ValueError, match="needs Dk == Dv"):
        chunk_nested(MemorySpec(chunk_size=4), inp["q"], inp["k"], inp["v"][..., :3], inp["lr"],
                     inp["retain"])  # fmt: skip
    with pytest.raises(ValueError, match="no dedicated op"):
        nested_memory(MemorySpec(objective="dot", chunk_size=4), **inp, backend="dedicated")
