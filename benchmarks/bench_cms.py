"""Timing of the Continuum Memory System against a plain SwiGLU FFN (timing only; prints JSON).

Each configuration is timed forward+backward (the training cost of the module alone) on one
``[B, T, D]`` input, alternating with the SwiGLU baseline call by call in the same process, and
reported as ``ratio = cms_seconds / swiglu_seconds`` (best of ``--reps`` each). The SwiGLU has the Transformer++
width ``8/3 D``; every CMS config has about the same number of parameters (the default hidden
split). ``--model`` compares whole 4-layer LMs (attention + CMS, the Hope-Attention shape,
against Transformer++; vocabulary 256), including the exact next-token driver; ``--decode``
times module decoding after 1K and 16K tokens. Ratios, not absolute times, are the result: run
it twice on a busy machine.

    .venv/bin/python benchmarks/bench_cms.py --threads 2 --D 256 --B 4 --T 512
    .venv/bin/python benchmarks/bench_cms.py --model --threads 2
    .venv/bin/python benchmarks/bench_cms.py --decode --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nestlearn.memory.cms import CMSConfig, ContinuumMemory


class _SwiGLU(torch.nn.Module):
    """The Transformer++ FFN (same math as ``nestlearn.layers.ffn.SwiGLU``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_gate = torch.nn.Linear(dim, hidden, bias=False)
        self.w_up = torch.nn.Linear(dim, hidden, bias=False)
        self.w_down = torch.nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor, *, state: None = None) -> tuple[torch.Tensor, None]:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x)), None


CONFIGS: dict[str, dict] = {
    "static": {"mode": "static"},
    "w/o CMS (one static MLP)": {"enabled": False},
    "in_context first_order (16,64,128) [default]": {},
    "in_context full (16,64,128)": {"meta_grad": "full"},
    "in_context first_order (8,32,128)": {"periods": (8, 32, 128)},
    "in_context first_order (32,128,256)": {"periods": (32, 128, 256)},
    "in_context first_order (64,128,256)": {"periods": (64, 128, 256)},
    "nested first_order (16,64,128)": {"variant": "nested"},
    "independent first_order (16,64,128)": {"variant": "independent"},
}


def best_time(fn: Callable[[], object], reps: int) -> float:
    fn()
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def paired_best(
    fa: Callable[[], object], fb: Callable[[], object], reps: int
) -> tuple[float, float]:
    """Best time of each of two functions, timed alternately so both see the same machine load."""
    fa(), fb()
    ta = tb = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fa()
        t1 = time.perf_counter()
        fb()
        t2 = time.perf_counter()
        ta, tb = min(ta, t1 - t0), min(tb, t2 - t1)
    return ta, tb


def fwd_bwd(mod: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        y, _ = mod(x)
        y.square().mean().backward()
        mod.zero_grad(set_to_none=True)
        x.grad = None

    return run


def model_rows(a: argparse.Namespace) -> list[dict]:
    """Transformer++ vs attention + CMS language models (Hope-Attention shape), fwd+bwd."""
    from nestlearn.layers.attention import CausalSelfAttention
    from nestlearn.models.config import ModelConfig
    from nestlearn.models.ntp import ntp_forward
    from nestlearn.models.skeleton import Block, LanguageModel

    cfg = ModelConfig(vocab_size=256, dim=a.D, n_layers=4, n_heads=4)

    def lm(ffn: Callable[[], torch.nn.Module]) -> LanguageModel:
        blocks = [Block(a.D, CausalSelfAttention(a.D, 4), ffn(), 1e-6) for _ in range(4)]
        m = LanguageModel(cfg, blocks)
        m.init_weights(seed=0)
        return m

    idx = torch.randint(0, 256, (a.B, a.T))

    def step(m: LanguageModel, driver: bool) -> Callable[[], None]:
        def run() -> None:
            if driver:
                loss = ntp_forward(m, idx).loss
            else:
                logits, _ = m(idx)
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())
            loss.backward()
            m.zero_grad(set_to_none=True)

        return run

    base = lm(lambda: _SwiGLU(a.D, int(math.ceil(8 * a.D / 3 / 64) * 64)))
    variants = {
        "attn+CMS static": ({"mode": "static"}, False),
        "attn+CMS next first_order [default]": ({}, False),
        "attn+CMS next full": ({"meta_grad": "full"}, False),
        "attn+CMS ntp-driver first_order": ({"objective": "ntp"}, True),
        "attn+CMS ntp-driver full": ({"objective": "ntp", "meta_grad": "full"}, True),
    }
    rows = []
    for name, (over, driver) in variants.items():
        if a.only and not any(s in name for s in a.only.split(",")):
            continue
        m = lm(lambda over=over: ContinuumMemory(a.D, CMSConfig(**over)))
        t_base, t = paired_best(step(base, False), step(m, driver), a.reps)
        rows.append({"config": name, "model_s": round(t, 4), "transformer_s": round(t_base, 4),
                     "tok_s_ratio_vs_transformer": round(t_base / t, 3)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def decode_rows(a: argparse.Namespace) -> list[dict]:
    """Module decode cost per token after 1K and 16K tokens of context (B=1)."""
    torch.manual_seed(0)
    mod = ContinuumMemory(a.D, CMSConfig())
    rows = []
    with torch.no_grad():
        for ctx in (1024, 16384):
            st = mod.init_state(1, torch.device("cpu"), torch.float32)
            _, st = mod(torch.randn(1, ctx, a.D), state=st)
            xs = torch.randn(1, 64, a.D)

            def dec(st=st, xs=xs) -> None:
                s = st
                for i in range(64):
                    _, s = mod(xs[:, i : i + 1], state=s)

            t = best_time(dec, a.reps)
            size = sum(v.numel() for v in st.to_dict().values())
            rows.append({"context": ctx, "decode_tok_s": round(64 / t, 1), "state_numbers": size})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--D", type=int, default=256)
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated substrings of config names")
    ap.add_argument("--model", action="store_true", help="compare whole 4-layer LMs instead")
    ap.add_argument("--decode", action="store_true", help="module decode speed at 1K vs 16K")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.model or a.decode:
        rows = model_rows(a) if a.model else decode_rows(a)
        print(json.dumps({"shape": [a.B, a.T, a.D], "threads": a.threads, "results": rows}))
        return
    x = torch.randn(a.B, a.T, a.D, requires_grad=True)
    base = _SwiGLU(a.D, int(math.ceil(8 * a.D / 3 / 64) * 64))
    for p in base.parameters():
        torch.nn.init.normal_(p, std=0.02)
    rows = []
    for name, over in CONFIGS.items():
        if a.only and not any(s in name for s in a.only.split(",")):
            continue
        mod = ContinuumMemory(a.D, CMSConfig(**over))
        for p in mod.parameters():
            if p.ndim == 2:
                torch.nn.init.normal_(p, std=0.02)
        t_base, t_cms = paired_best(fwd_bwd(base, x), fwd_bwd(mod, x), a.reps)
        rows.append({
            "config": name,
            "cms_s": round(t_cms, 4),
            "swiglu_s": round(t_base, 4),
            "ratio": round(t_cms / t_base, 2),
            "cms_params": sum(p.numel() for p in mod.parameters()),
            "swiglu_params": sum(p.numel() for p in base.parameters()),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"shape": [a.B, a.T, a.D], "threads": a.threads, "results": rows}))


if __name__ == "__main__":
    main()
