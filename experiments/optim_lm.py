"""AdamW, Muon, M3 and DeltaMomentum on ``transformer-tiny`` and the embedded corpus (issue 5, item 3).

SGD momentum (``sgd``, the delta rule's decay switched off) runs as a control for DeltaMomentum.

Protocol (equal steps for everyone; small, CPU-sized budget):

1. **Tune**: for each optimizer, seed 0, a small learning-rate grid, extended by 3x steps (at
   most twice) while the best point sits on its edge. AdamW first (``optim.lr``);
   the others tune ``optim.matrix_lr`` of the hidden matrices while their AdamW fallback group
   (embeddings, head, vectors) uses AdamW's tuned ``optim.lr``, so they differ from AdamW only
   on the hidden matrices. Pick the lowest final validation loss.
2. **Seeds**: rerun the picked setting with seeds 1 and 2 (seed 0 is reused: runs are
   deterministic). Report final validation loss mean ± std over the 3 seeds.
3. **Timing**: one model per optimizer, all stepping in lockstep on the same batches in this
   process (so machine load hits them alike); median seconds per full training step
   (forward + backward + clip + optimizer step) relative to AdamW, and M3 / Muon.

Results go to ``--out/results.json`` (resumable: finished runs are skipped), a figure
``docs/figures/optim_lm.png`` and the section between the ``optim_lm`` markers of
``docs/optimizers.md``. Uses the trainer's Python API (``nestlearn.train.Trainer``).

    python experiments/optim_lm.py --steps 150          # 20 runs; ~20 min on an idle CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nestlearn.optim import build_optimizer  # noqa: E402
from nestlearn.train import Trainer, resolve_config  # noqa: E402
from nestlearn.train.batches import batch_starts, make_batch  # noqa: E402
from nestlearn.train.trainer import open_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- optim_lm:begin -->", "<!-- optim_lm:end -->"
GRIDS: dict[str, tuple[str, list[float]]] = {
    "adamw": ("optim.lr", [3e-4, 1e-3, 3e-3, 1e-2]),
    "muon": ("optim.matrix_lr", [1e-3, 3e-3, 1e-2]),
    "m3": ("optim.matrix_lr", [1e-3, 3e-3, 1e-2]),
    "delta-momentum": ("optim.matrix_lr", [0.03, 0.1, 0.3]),
    # Control: the same heavy-ball momentum without the delta rule's gradient-dependent decay.
    "sgd": ("optim.matrix_lr", [0.03, 0.1, 0.3]),
}
SEEDS = (0, 1, 2)


def overrides(
    name: str, lr: float, seed: int, args: argparse.Namespace, fallback_lr: float = 3e-3
) -> list[str]:
    key, _ = GRIDS[name]
    out = [
        f"optim.name={name}",
        f"{key}={lr}",
        f"train.seed={seed}",
        f"train.steps={args.steps}",
        f"data.batch_size={args.batch_size}",
        f"data.seq_len={args.seq_len}",
        f"schedule.warmup_steps={max(1, args.steps // 10)}",
        f"train.eval_tokens={args.eval_tokens}",
        "train.eval_every=0",
        "train.ckpt_every=0",
        "train.progress=false",
        "train.device=cpu",
        f"train.threads={args.threads}",
    ]
    if name != "adamw":
        out.append(f"optim.lr={fallback_lr}")
    if name == "sgd":  # match DeltaMomentum's read-out (no Nesterov) so only the decay differs
        out.append("optim.nesterov=false")
    if name == "m3":
        # The default period (100 steps) would update the slow memory once in a short run.
        out.append(f"optim.m3_slow_every={max(1, args.steps // 8)}")
    return out


def run_one(
    name: str, lr: float, seed: int, args: argparse.Namespace, data: Any, fallback_lr: float
) -> dict:
    cfg = resolve_config(args.preset, None, overrides(name, lr, seed, args, fallback_lr))
    times: list[float] = []
    last = [time.perf_counter()]

    def on_step(trainer: Trainer, step: int, loss: float) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    run_dir = Path(args.out) / "runs" / f"{name}-lr{lr:g}-s{seed}"
    res = Trainer(cfg, run_dir=run_dir, data=data, on_step_end=on_step).fit()
    if res.interrupted:  # SIGINT/SIGTERM: the trainer stopped early; do not record the run
        raise SystemExit("interrupted; rerun the same command to continue where it stopped")
    return {
        "name": name,
        "lr": lr,
        "seed": seed,
        "fallback_lr": fallback_lr if name != "adamw" else None,
        "val_loss": res.final_eval.get("loss", float("nan")),
        "losses": res.losses,
        "median_step_s": statistics.median(times[2:]) if len(times) > 3 else float("nan"),
    }


def lockstep_timing(
    args: argparse.Namespace, best: dict[str, float], data: Any, fallback_lr: float
) -> dict:
    """Median seconds per training step, all optimizers interleaved step by step."""
    _, train, _ = data
    models, opts, times = {}, {}, {}
    for name in GRIDS:
        cfg = resolve_config(args.preset, None, overrides(name, best[name], 0, args, fallback_lr))
        cfg.model.vocab_size = cfg.model.vocab_size or int(data[0].vocab_size)
        from nestlearn.models import build_model

        models[name] = build_model(cfg.model, device=torch.device("cpu"), seed=0)
        opts[name] = build_optimizer(models[name], cfg.optim)
        times[name] = []
    torch.set_num_threads(args.threads)
    for step in range(args.timing_steps):
        starts = batch_starts(len(train), args.seq_len, args.batch_size, 0, step)
        x, y = make_batch(train, starts, args.seq_len)
        order = list(GRIDS) if step % 2 == 0 else list(reversed(GRIDS))
        for name in order:
            t0 = time.perf_counter()
            logits, _ = models[name](x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(models[name].parameters(), 1.0)
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t0)
    med = {n: statistics.median(t[3:]) for n, t in times.items()}
    return {"median_step_s": med, "steps": args.timing_steps}


def write_report(results: list[dict], timing: dict | None, args: argparse.Namespace) -> str:
    best: dict[str, float] = {}
    for name in GRIDS:
        tune = {r["lr"]: r["val_loss"] for r in results if r["name"] == name and r["seed"] == 0}
        if tune:
            best[name] = min(tune, key=lambda lr: tune[lr])
    rows = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in GRIDS:
        if name not in best:
            continue
        runs = [r for r in results if r["name"] == name and r["lr"] == best[name]]
        vals = [r["val_loss"] for r in runs]
        tune = sorted((r["lr"], r["val_loss"]) for r in results if r["name"] == name
                      and r["seed"] == 0)  # fmt: skip
        mean = statistics.mean(vals)
        std = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        rel = ""
        if timing:
            med = timing["median_step_s"]
            rel = f"{med[name] / med['adamw']:.2f}x"
        key = GRIDS[name][0].split(".")[1]
        tune_txt = ", ".join(f"{lr:g}: {v:.3f}" for lr, v in tune)
        rows.append(f"| {name} | {key} = {best[name]:g} | {len(vals)} | {mean:.4f} ± {std:.4f} | "
                    f"{rel} | {tune_txt} |")  # fmt: skip
        curves = np.array([r["losses"] for r in runs])
        k = max(1, args.steps // 40)
        smooth = np.convolve(curves.mean(0), np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(smooth)) + k, smooth, label=f"{name} (final val {mean:.3f})")
    ax.set(xlabel="step", ylabel="training loss (mean of seeds, smoothed)",
           title=f"{args.preset}: equal steps, best lr per optimizer")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig_path = REPO / "docs/figures/optim_lm.png"
    fig_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(fig_path, dpi=110)
    timing_txt = ""
    if timing:
        med = timing["median_step_s"]
        timing_txt = (
            f"Time per step: median over {timing['steps']} lockstep steps in one process "
            f"(AdamW {med['adamw'] * 1e3:.0f} ms/step on this machine); "
            f"**M3 / Muon = {med['m3'] / med['muon']:.2f}x** (target <= 1.3x)."
        )
    tokens = args.batch_size * args.seq_len
    section = "\n".join([
        BEGIN,
        f"*Generated by `experiments/optim_lm.py`: `{args.preset}`, byte tokenizer, embedded "
        f"corpus, {args.steps} steps of {args.batch_size} x {args.seq_len} = {tokens} tokens, "
        f"warm-up {max(1, args.steps // 10)} + cosine, grad clip 1, validation on "
        f"{args.eval_tokens} held-out tokens; CPU, {args.threads} thread(s). M3: "
        f"`m3_slow_every={max(1, args.steps // 8)}`, `m3_alpha=0.5`, `beta3=0.9`; Muon/M3 use "
        f"`muon_adjust_lr=match_rms_adamw`; embeddings, head and vectors use AdamW at "
        f"AdamW's tuned rate ({best.get('adamw', float('nan')):g}) for every optimizer.*",
        "",
        "![lm](figures/optim_lm.png)",
        "",
        "| optimizer | tuned on seed 0 | seeds | final val loss (mean ± std) | "
        "time/step vs AdamW | grid: lr: val loss (seed 0) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        timing_txt,
        END,
    ])  # fmt: skip
    return section


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="transformer-tiny")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-tokens", type=int, default=32768)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 avoids OpenMP oversubscription on a shared machine",
    )
    ap.add_argument("--timing-steps", type=int, default=30)
    ap.add_argument("--out", default=str(REPO / "runs/optim_lm"))
    ap.add_argument("--doc", default=str(REPO / "docs/optimizers.md"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    state = json.loads(res_path.read_text()) if res_path.exists() else {"runs": []}
    old = state.get("config")
    if old is not None and any(old.get(k) != v for k, v in vars(args).items() if k != "doc"):
        print("note: results.json was made with other arguments; starting afresh")
        state = {"runs": []}
    state["config"] = vars(args)
    cfg0 = resolve_config(args.preset, None, overrides("adamw", 1e-3, 0, args))
    data = open_data(cfg0)

    def have(name: str, lr: float, seed: int, fb: float | None) -> bool:
        return any(
            r["name"] == name and r["lr"] == lr and r["seed"] == seed
            and r.get("fallback_lr") == (None if name == "adamw" else fb)
            for r in state["runs"]
        )  # fmt: skip

    def save() -> None:
        res_path.write_text(json.dumps(state))

    def ensure(name: str, lr: float, seed: int, fb: float) -> None:
        if not have(name, lr, seed, fb):
            state["runs"].append(run_one(name, lr, seed, args, data, fb))
            r = state["runs"][-1]
            print(f"{name} lr={lr:g} seed={seed}: val {r['val_loss']:.4f}", flush=True)
            save()

    def pick(name: str, fb: float) -> float:
        tune = {r["lr"]: r["val_loss"] for r in state["runs"] if r["name"] == name
                and r["seed"] == 0 and r.get("fallback_lr") == (None if name == "adamw" else fb)}  # fmt: skip
        return min(tune, key=lambda lr: tune[lr])

    def tune(name: str, fb: float) -> float:
        """Run the grid; while the best point is on an edge, extend by 3x (at most twice)."""
        grid = sorted(GRIDS[name][1])
        for lr in grid:
            ensure(name, lr, 0, fb)
        for _ in range(2):
            best_lr = pick(name, fb)
            if best_lr == max(grid):
                grid.append(best_lr * 3)
            elif best_lr == min(grid):
                grid.insert(0, best_lr / 3)
            else:
                break
            ensure(name, grid[-1] if best_lr == grid[-2] else grid[0], 0, fb)
        return pick(name, fb)

    fallback_lr = tune("adamw", 0.0)
    state["runs"] = [r for r in state["runs"] if r["name"] == "adamw"
                     or r.get("fallback_lr") == fallback_lr]  # fmt: skip
    best = {name: tune(name, fallback_lr) for name in GRIDS}
    for seed in SEEDS[1:]:
        for name in GRIDS:
            ensure(name, best[name], seed, fallback_lr)
    if set(state.get("timing", {}).get("median_step_s", {})) != set(GRIDS):
        state["timing"] = lockstep_timing(args, best, data, fallback_lr)
        save()
    section = write_report(state["runs"], state["timing"], args)
    doc = Path(args.doc)
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)
    print(section)


if __name__ == "__main__":
    main()
