"""Check every ``-tiny`` preset on an accelerator against the CPU, in one process.

For each family: the model is built on the CPU in float32, copied to ``--device``, and fed the
same tokens. Reported per family (one JSON line each, then a table):

- ``fwd_rel``: max |logits_dev - logits_cpu| / max |logits_cpu| in float32 (TF32 off);
- ``grad_rel``: the same over all parameter gradients of the mean cross-entropy;
- ``bf16_loss_diff``: |loss under bf16 autocast - float32 loss| on the device;
- ``decode_rel``: token-by-token decoding with per-sequence state against one full forward,
  on the device (the streaming path; last 8 positions);
- ``finite``: every output and gradient finite.

Usage (what the device run of session 4 used)::

    python benchmarks/gpu_check.py --device cuda --json

On a machine without the device it exits with a clear message. Tolerances: float32 kernels on
different hardware differ at the 1e-5 level; anything above ``--tol`` (default 1e-3) fails.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from nestlearn.models import PRESETS, build_model, preset_config


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(
        (a.float().cpu() - b.float().cpu()).abs().max() / b.float().abs().max().clamp_min(1e-12)
    )


def check_preset(
    name: str, device: torch.device, *, batch: int, seq: int, vocab: int
) -> dict[str, Any]:
    cfg = dataclasses.replace(preset_config(name), vocab_size=vocab)
    t0 = time.perf_counter()
    cpu = build_model(cfg, device=torch.device("cpu"), seed=0)
    dev = copy.deepcopy(cpu).to(device)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=gen)
    x, y = idx[:, :-1], idx[:, 1:]

    def loss_and_grads(m: torch.nn.Module, xx: torch.Tensor, yy: torch.Tensor, bf16: bool = False):
        m.zero_grad(set_to_none=True)
        ctx = (
            torch.autocast(device_type=xx.device.type, dtype=torch.bfloat16)
            if bf16
            else torch.autocast(device_type=xx.device.type, enabled=False)
        )
        with ctx:
            logits, _ = m(xx)
            loss = F.cross_entropy(logits.float().flatten(0, 1), yy.flatten())
        loss.backward()
        grads = [p.grad.detach().clone() for p in m.parameters() if p.grad is not None]
        return logits.detach(), loss.detach(), grads

    lc, loss_c, gc = loss_and_grads(cpu, x, y)
    ld, loss_d, gd = loss_and_grads(dev, x.to(device), y.to(device))
    fwd_rel = _rel(ld, lc)
    grad_rel = max(_rel(a, b) for a, b in zip(gd, gc, strict=True))
    lb, loss_b, gb = loss_and_grads(dev, x.to(device), y.to(device), bf16=True)
    finite = bool(
        torch.isfinite(ld).all() and torch.isfinite(lb).all()
        and all(torch.isfinite(g).all() for g in gd + gb)
    )  # fmt: skip

    # streaming: prefix in one call, then one token at a time with the carried state
    dev.eval()
    with torch.no_grad():
        xd = x[:1].to(device)
        full, _ = dev(xd)
        k = 8
        out, st = dev(xd[:, : seq - k], return_state=True)
        steps = []
        for t in range(seq - k, seq):
            o, st = dev(xd[:, t : t + 1], state=st)
            steps.append(o)
        dec = torch.cat(steps, dim=1)
        decode_rel = _rel(dec, full[:, seq - k :])
    return {
        "preset": name,
        "params": sum(p.numel() for p in cpu.parameters()),
        "loss_cpu": round(float(loss_c), 5),
        "fwd_rel": fwd_rel,
        "grad_rel": grad_rel,
        "bf16_loss_diff": abs(float(loss_b) - float(loss_d)),
        "decode_rel": decode_rel,
        "finite": finite,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", action="append", help="default: every -tiny preset")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=200)
    p.add_argument("--vocab", type=int, default=512, help="vocabulary (the presets leave it open)")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False; use --device cpu")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    names = a.preset or sorted(n for n in PRESETS if n.endswith("-tiny"))
    bad = 0
    rows = []
    for n in names:
        try:
            r = check_preset(n, device, batch=a.batch, seq=a.seq, vocab=a.vocab)
            r["ok"] = bool(
                r["finite"] and r["fwd_rel"] < a.tol and r["grad_rel"] < a.tol
                and r["decode_rel"] < a.tol and r["bf16_loss_diff"] < 0.05
            )  # fmt: skip
        except Exception as e:  # report and go on: one broken family must not hide the rest
            r = {"preset": n, "ok": False, "error": f"{type(e).__name__}: {e}"}
        bad += not r["ok"]
        rows.append(r)
        if a.json:
            print(json.dumps(r), flush=True)
    print(f"\n{'preset':<22} {'fwd_rel':>9} {'grad_rel':>9} {'bf16 dL':>8} {'decode':>9} ok")
    for r in rows:
        if "error" in r:
            print(f"{r['preset']:<22} ERROR {r['error']}")
            continue
        print(
            f"{r['preset']:<22} {r['fwd_rel']:9.1e} {r['grad_rel']:9.1e} "
            f"{r['bf16_loss_diff']:8.4f} {r['decode_rel']:9.1e} {'yes' if r['ok'] else 'NO'}"
        )
    print(f"\n{len(rows) - bad}/{len(rows)} presets pass on {device}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
