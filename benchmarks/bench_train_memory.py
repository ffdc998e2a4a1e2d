"""Training memory of the chunked memories with and without chunk-group recompute (prints JSON).

Three measurements, each a fresh subprocess per setting so a peak never carries over:

* ``rss``: peak resident memory (``VmHWM``) of two hope-tiny training steps (forward, loss,
  backward, AdamW) at ``--batch x --seq`` (default 16 x 256, the ``make demo`` shape), byte
  vocabulary, for every ``--groups`` value (``model.mixer.recompute_group``; 0 = off), with
  the trainer's heap policy (``--mmap-kb``, ``train.mmap_threshold_kb``; 0 = glibc's default).
* ``kept``: bytes one Hope block keeps for backward, at ``--preset``'s width (default
  hope-760m: d=1536, 16 heads, CMS periods 16/256/2048) on ``[1, --kept-seq, d]`` in float32 on
  the CPU: the resident memory after its forward minus before (the graph, its saved tensors and
  the recompute snapshots; large blocks are returned to the system on free, see
  ``MALLOC_MMAP_THRESHOLD_`` below), plus what ``saved_tensors_hooks`` sees outside the
  recomputed groups (the tensors kept inside a checkpoint are the group's inputs, which no hook
  reports: hence the RSS figure is the one to compare).
* ``speed``: tokens/s of a hope-tiny training step (forward, loss, backward) at
  ``--speed-batch x --speed-seq`` (default 4 x 512) for every ``--groups`` value, alternating in
  one process, one thread; the ratio to the first value is the result, in the process's CPU
  time (robust on a shared machine) and in wall time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_memory.py rss --groups 0,4,8,16
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_memory.py kept --groups 0,8,16
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_memory.py speed --groups 0,8
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def _vm(field: str) -> float:
    """``/proc/self/status`` field in MiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
    return int(m.group(1)) / 1024 if m else float("nan")


def _hope_tiny(group: int, vocab: int = 259, seq: int = 256):
    from nestlearn.models import ModelConfig, build_model
    from nestlearn.models.registry import PRESETS

    d = copy.deepcopy(PRESETS["hope-tiny"])
    d["vocab_size"], d["max_seq_len"] = vocab, max(seq, d["max_seq_len"])
    d["mixer"] = {**d.get("mixer", {}), "recompute_group": group}
    torch.manual_seed(0)
    return build_model(ModelConfig(**d), seed=0)


def child_rss(group: int, batch: int, seq: int, mmap_kb: int) -> dict:
    from nestlearn.train.heap import set_mmap_threshold

    set_mmap_threshold(mmap_kb * 1024)  # what the trainer does on CPU (0: glibc's default)
    model = _hope_tiny(group, seq=seq)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, 259, (batch, seq), generator=torch.Generator().manual_seed(0))
    before = _vm("VmRSS")
    for _ in range(2):
        logits, _ = model(idx)
        loss = F.cross_entropy(logits.float().flatten(0, 1)[:-1], idx.flatten()[1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"group": group, "mmap_threshold_kb": mmap_kb, "peak_rss_mb": round(_vm("VmHWM"), 1),
            "rss_before_mb": round(before, 1), "loss": float(loss.detach())}  # fmt: skip


def child_kept(group: int, preset: str, seq: int) -> dict:
    from nestlearn.models import ModelConfig
    from nestlearn.models.registry import FAMILIES, PRESETS

    d = copy.deepcopy(PRESETS[preset])
    d["mixer"] = {**d.get("mixer", {}), "recompute_group": group}
    cfg = ModelConfig(**d)
    torch.manual_seed(0)
    block = FAMILIES[cfg.family].build_block(cfg, 0)
    for m in block.modules():  # the skeleton's init for Linears; the rest set their own
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.02)
    x = torch.randn(1, seq, cfg.dim, requires_grad=True)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen.setdefault(st.data_ptr(), st.nbytes())
        return t

    gc.collect()
    rss0 = _vm("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = block(x)
    fwd_s, fwd_cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.collect()
    kept = _vm("VmRSS") - rss0 - y.numel() * y.element_size() / 2**20
    t0, c0 = time.perf_counter(), time.process_time()
    y.backward(torch.ones_like(y))
    bwd_s, bwd_cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"group": group, "kept_mb": round(kept, 1),
            "hooked_saved_mb": round(sum(seen.values()) / 2**20, 1),
            "peak_rss_mb": round(_vm("VmHWM"), 1), "fwd_s": round(fwd_s, 2),
            "bwd_s": round(bwd_s, 2), "fwd_cpu_s": round(fwd_cpu, 2),
            "bwd_cpu_s": round(bwd_cpu, 2)}  # fmt: skip


def child_speed(groups: list[int], batch: int, seq: int, reps: int) -> dict:
    models = {g: _hope_tiny(g, seq=seq) for g in groups}
    for m in models.values():  # identical weights: the same model with another option
        m.load_state_dict(models[groups[0]].state_dict())
    idx = torch.randint(0, 259, (batch, seq), generator=torch.Generator().manual_seed(0))
    wall: dict[int, list[float]] = {g: [] for g in groups}
    cpu: dict[int, list[float]] = {g: [] for g in groups}

    def step(m: torch.nn.Module, g: int) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        logits, _ = m(idx)
        F.cross_entropy(logits.float().flatten(0, 1)[:-1], idx.flatten()[1:]).backward()
        m.zero_grad(set_to_none=True)
        wall[g].append(time.perf_counter() - t0)
        cpu[g].append(time.process_time() - c0)

    for g in groups:
        step(models[g], g)  # warm-up
        wall[g].clear()
        cpu[g].clear()
    for _ in range(reps):
        for g in groups:  # alternate, so a load change hits every setting alike
            step(models[g], g)
    # the process's CPU time is the figure to compare on a shared machine (one thread: it is the
    # work done, page faults included); wall time is reported beside it
    med = {g: (statistics.median(wall[g]), statistics.median(cpu[g])) for g in groups}
    w0, c0 = med[groups[0]]
    return {
        str(g): {"tok_s_wall": round(batch * seq / w), "tok_s_cpu": round(batch * seq / c),
                 "cpu_time_ratio": round(c / c0, 3), "wall_time_ratio": round(w / w0, 3)}
        for g, (w, c) in med.items()
    }  # fmt: skip


def _spawn(args: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if args[0] == "kept":
        # every block over 128 KiB is its own mapping, returned to the system when freed, so
        # the resident memory after the forward is what the graph holds (the rss and speed
        # runs keep glibc's defaults: what a user's process does)
        env |= {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, __file__, "--child", *args], env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("rss", "kept", "speed"))
    p.add_argument("--groups", default="0,8", help="recompute_group values (0 = off)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--preset", default="hope-760m")
    p.add_argument("--kept-seq", type=int, default=2048)
    p.add_argument("--speed-batch", type=int, default=4)
    p.add_argument("--speed-seq", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--mmap-kb", type=int, default=1024,
                   help="rss: train.mmap_threshold_kb (0 = glibc's default policy)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(1)
    groups = [int(g) for g in a.groups.split(",")]
    if a.child:
        if a.what == "rss":
            out = child_rss(groups[0], a.batch, a.seq, a.mmap_kb)
        elif a.what == "kept":
            out = child_kept(groups[0], a.preset, a.kept_seq)
        else:
            out = child_speed(groups, a.speed_batch, a.speed_seq, a.reps)
        print(json.dumps(out))
        return
    common = ["--batch", str(a.batch), "--seq", str(a.seq), "--preset", a.preset,
              "--kept-seq", str(a.kept_seq), "--speed-batch", str(a.speed_batch),
              "--speed-seq", str(a.speed_seq), "--reps", str(a.reps),
              "--mmap-kb", str(a.mmap_kb)]  # fmt: skip
    if a.what == "speed":
        rows = [_spawn(["speed", "--groups", a.groups, *common])]
    else:
        rows = [_spawn([a.what, "--groups", str(g), *common]) for g in groups]
    print(json.dumps({"what": a.what, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
