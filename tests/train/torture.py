"""kill -9 torture of `nestlearn train`: random kills, many during checkpoint writes.

A reference run trains uninterrupted and keeps every checkpoint. The tortured run trains the
same config (a checkpoint every step, ``keep_last=1``: the hardest case) and is killed with
SIGKILL again and again, half of the time while a checkpoint is being written (a ``.tmp-``
folder exists), half of the time at a random moment; after each kill it is resumed with
``nestlearn train --resume`` (or started again when it died before writing its config).

After every kill the checkpoint a resume would use is checked against the reference:

* corrupt but accepted: it verifies but its weights differ from the reference's at that step;
* lost run: no usable checkpoint is left although one existed before, or the newest usable one
  is older than one seen before (keep_last=1 means the only checkpoint must never vanish);

and at the end of each chain of kills and resumes the finished run must equal the reference
bit for bit (resume mismatch otherwise): every metrics record (each step exactly once, the
timing fields aside) and the final weights and optimizer state.

Usage (the measurement in the issue's report)::

    PYTHONPATH=src python tests/train/torture.py --kills 50 --out /tmp/torture [--fork]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

SMALL = [
    "model.dim=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.max_seq_len=32",
    "data.seq_len=32",
    "data.batch_size=4",
    "train.eval_tokens=512",
    "train.progress=false",
    "train.threads=1",
    "schedule.warmup_steps=3",
]
TIMING = ("tokens_per_s", "time_s")


def _data(workdir: Path) -> Path:
    """A small prepared folder (bytes of this package's source), made once."""
    folder = workdir / "data"
    if not (folder / "metadata.json").exists():
        from nestlearn.data.prepare import prepare

        text = workdir / "source.txt"
        files = sorted((REPO / "src" / "nestlearn").rglob("*.py"))[:40]
        text.write_text("\n".join(f.read_text(encoding="utf-8") for f in files), encoding="utf-8")
        prepare([text], folder, "byte", progress=False)
    return folder


def _argv(run: Path, data: Path, steps: int, keep_last: int, resume: bool) -> list[str]:
    if resume:
        return ["train", "--resume", str(run)]
    return [
        "train", "--preset", "transformer-tiny", "--out", str(run), *SMALL,
        f"data.train={data}", f"train.steps={steps}", "train.ckpt_every=1",
        f"train.keep_last={keep_last}", f"train.eval_every={max(2, steps // 4)}",
    ]  # fmt: skip


class Launcher:
    """Starts `nestlearn train` as a new interpreter (``exec``) or a fork of this one (``fork``:
    no import cost per start; the kill is the same SIGKILL)."""

    def __init__(self, mode: str, logs: Path) -> None:
        self.mode, self.logs, self.n = mode, logs, 0
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, argv: list[str]) -> int:
        self.n += 1
        log = self.logs / f"{self.n:03d}.log"
        if self.mode == "exec":
            env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
            with open(log, "w") as f:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "nestlearn.cli", *argv], stdout=f, stderr=f, env=env
                )
            self._procs = getattr(self, "_procs", {})
            self._procs[proc.pid] = proc
            return proc.pid
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                from nestlearn.cli import main

                code = main(argv)
            except BaseException:  # noqa: BLE001 - the exit code carries it
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return pid

    def poll(self, pid: int) -> int | None:
        """Exit code (negative signal number when killed), or None while running."""
        if self.mode == "exec":
            return self._procs[pid].poll()
        self._codes = getattr(self, "_codes", {})
        if pid in self._codes:
            return self._codes[pid]
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            return None
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        self._codes[pid] = code
        return code

    def wait(self, pid: int) -> int:
        while (code := self.poll(pid)) is None:
            time.sleep(0.005)
        return code


def _tensors_equal(a: dict, b: dict) -> bool:
    import torch

    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def _records(path: Path) -> tuple[dict, list[str]]:
    """Metrics records keyed by (kind, step) without timing fields, and the duplicates."""
    out, dups = {}, []
    if not path.exists():
        return out, dups
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        key = ("val" if "val_loss" in rec else "train", rec["step"])
        if key in out:
            dups.append(f"{key[0]} step {key[1]}")
        out[key] = {k: v for k, v in rec.items() if k not in TIMING}
    return out, dups


def torture(
    workdir: str | Path,
    *,
    kills: int = 20,
    steps: int = 40,
    seed: int = 0,
    mode: str = "fork",
    verbose: bool = False,
) -> dict:
    """Run the torture; returns the counts (see the module docstring)."""
    from safetensors.torch import load_file

    from nestlearn.train.checkpoint import CheckpointError, load_latest, recover

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    data = _data(workdir)
    launcher = Launcher(mode, workdir / "logs")
    ref = workdir / "ref"
    t0 = time.perf_counter()
    code = launcher.wait(launcher.start(_argv(ref, data, steps, steps + 1, False)))
    assert code == 0, (workdir / "logs" / "001.log").read_text()[-3000:]
    ref_time = time.perf_counter() - t0
    ref_ckpt = {p.name: p for p in (ref / "checkpoints").iterdir()}
    ref_records, _ = _records(ref / "metrics.jsonl")
    final = ref_ckpt[f"step_{steps:08d}"]
    report = {
        "kills": 0, "kills_during_write": 0, "kills_before_first_checkpoint": 0, "chains": 0,
        "corrupt_accepted": 0, "lost_runs": 0, "resume_mismatches": 0, "mismatch_detail": [],
        "starts": 0,
    }  # fmt: skip

    def note(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    while report["kills"] < kills:
        report["chains"] += 1
        run = workdir / f"run{report['chains']}"
        best = -1  # newest usable checkpoint step seen so far in this chain
        while True:
            resume = (run / "config.yaml").exists() or (run / "checkpoints").exists()
            pid = launcher.start(_argv(run, data, steps, 1, resume))
            report["starts"] += 1
            killed = False
            if report["kills"] < kills:
                during_write = rng.random() < 0.5
                deadline = time.perf_counter() + (
                    rng.uniform(0.05, 1.2 * ref_time) if not during_write else 4 * ref_time + 5
                )
                ckpt_dir = run / "checkpoints"
                skip, seen = rng.randint(0, 6), set()  # kill during the (skip+1)-th write
                while launcher.poll(pid) is None and time.perf_counter() < deadline:
                    if during_write and ckpt_dir.is_dir():
                        try:
                            busy = [
                                e.name for e in os.scandir(ckpt_dir) if e.name.startswith(".tmp-")
                            ]
                        except FileNotFoundError:
                            busy = []
                        seen.update(busy)
                        if busy and len(seen) > skip:
                            time.sleep(rng.uniform(0, 0.003))
                            break
                    time.sleep(0.0002 if during_write else 0.002)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                code = launcher.wait(pid)
                killed = code == -signal.SIGKILL
            else:
                code = launcher.wait(pid)
            if not killed:
                if code != 0:
                    log = sorted((workdir / "logs").iterdir())[-1].read_text()
                    report["resume_mismatches"] += 1
                    report["mismatch_detail"].append(f"{run.name}: exit {code}: {log[-600:]}")
                break
            report["kills"] += 1
            ckpt_dir = run / "checkpoints"
            if ckpt_dir.is_dir() and any(p.name.startswith(".tmp-") for p in ckpt_dir.iterdir()):
                report["kills_during_write"] += 1
            recover(ckpt_dir)  # what the next resume does first
            try:
                ckpt = load_latest(ckpt_dir)
            except CheckpointError as e:
                ckpt = None
                note(f"  all checkpoints damaged: {e}")
            if ckpt is None:
                if best >= 0:
                    report["lost_runs"] += 1
                    note(f"  LOST: checkpoint of step {best} is gone")
                else:
                    report["kills_before_first_checkpoint"] += 1
            else:
                want = load_file(ref_ckpt[ckpt.path.name] / "model.safetensors")
                if not _tensors_equal(ckpt.model, want):
                    report["corrupt_accepted"] += 1
                if ckpt.step < best:
                    report["lost_runs"] += 1
                best = max(best, ckpt.step)
            note(f"kill {report['kills']}: {run.name} at checkpoint {best}")
            if report["kills"] >= kills:
                continue  # one more start, not killed: it finishes the chain
        # the chain finished: compare with the reference bit for bit
        got, dups = _records(run / "metrics.jsonl")
        problems = [f"duplicate records: {dups[:5]}"] if dups else []
        if got != ref_records:
            keys = sorted(set(got) | set(ref_records))
            diff = [k for k in keys if got.get(k) != ref_records.get(k)][:5]
            problems.append(f"metrics differ at {diff}")
        last = run / "checkpoints" / final.name
        for name in ("model.safetensors", "optim.safetensors"):
            if not (last / name).exists() or not _tensors_equal(
                load_file(last / name), load_file(final / name)
            ):
                problems.append(f"final {name} differs")
        ck = run / "checkpoints"
        leftovers = [p.name for p in ck.iterdir() if p.name.startswith(".")] if ck.is_dir() else []
        if leftovers:
            problems.append(f"leftover {leftovers}")
        if problems:
            report["resume_mismatches"] += 1
            report["mismatch_detail"].append(f"{run.name}: {'; '.join(problems)}")
    report["wall_time_s"] = round(time.perf_counter() - t0, 1)
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--fork", action="store_true", help="fork this interpreter instead of exec")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    rep = torture(args.out, kills=args.kills, steps=args.steps, seed=args.seed,
                  mode="fork" if args.fork else "exec", verbose=True)  # fmt: skip
    print(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
