"""Every bad input of issue 20 as a table: the command line, the exit code, what the message
must name, and the files that must come through unchanged.

``tests/cli/test_bad_inputs.py`` runs the table in-process (disk full simulated); run this file
to measure it with real processes, a real full disk (a 1 MiB tmpfs) and a real read-only folder
(a read-only bind mount) when run as root::

    PYTHONPATH=src python tests/cli/bad_inputs.py --out /tmp/bad-inputs
"""

from __future__ import annotations

import errno
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
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
    "schedule.warmup_steps=2",
]


@dataclass
class Env:
    """Fixtures shared by the cases: a trained titans run, a prepared folder, a state file."""

    root: Path
    base_run: Path
    data: Path
    state: Path
    text: Path
    n: int = 0

    def fresh(self, name: str) -> Path:
        self.n += 1
        return self.root / f"{self.n:03d}-{name}"

    def run(self) -> Path:
        """A private copy of the trained run."""
        dst = self.fresh("run")
        shutil.copytree(self.base_run, dst)
        return dst


@dataclass
class Case:
    name: str
    make: Callable[[Env, dict], list[str]]
    """Prepare the files and return the argv; may set ``ctx["protect"]`` (paths whose bytes
    must not change) and ``ctx["check"]`` (a callable run after the command)."""
    code: int
    needle: str
    """A substring of stderr (or stdout for exit 0) naming the problem."""
    simulate: str = ""
    """In-process failure injected by the test: ``enospc-checkpoint``, ``enospc-export``."""
    real: str = ""
    """What the subprocess measurement sets up instead: ``tmpfs`` (full disk), ``ro`` (a
    read-only bind mount), ``chmod`` (a folder without write permission)."""
    needs: tuple[str, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------------- helpers
def make_env(root: Path) -> Env:
    from nestlearn.cli import main
    from nestlearn.data.prepare import prepare

    root.mkdir(parents=True, exist_ok=True)
    text = root / "source.txt"
    files = sorted((REPO / "src" / "nestlearn").rglob("*.py"))[:30]
    text.write_text("\n".join(f.read_text(encoding="utf-8") for f in files), encoding="utf-8")
    data = root / "data"
    prepare([text], data, "byte", progress=False)
    run = root / "base-run"
    argv = ["train", "--preset", "titans-tiny", "--out", str(run), *SMALL, f"data.train={data}",
            "train.steps=4", "train.ckpt_every=2", "train.eval_every=2"]  # fmt: skip
    assert main(argv) == 0
    state = root / "state.safetensors"
    assert main(["generate", "--checkpoint", str(run), "--prompt", "ab", "--max-new-tokens", "3",
                 "--state-out", str(state)]) == 0  # fmt: skip
    return Env(root, run, data, state, text)


def last_ckpt(run: Path) -> Path:
    return sorted((run / "checkpoints").iterdir())[-1]


def reseal(ckpt: Path, edit: Callable[[dict], None]) -> None:
    """Edit a checkpoint's meta.json and give it a fresh self-checksum (a consistent file)."""
    from nestlearn.train.checkpoint import _meta_digest

    meta = json.loads((ckpt / "meta.json").read_text())
    edit(meta)
    if meta.get("format_version") == 2:
        meta["meta_sha256"] = _meta_digest(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))


def rehash(ckpt: Path, name: str) -> None:
    from nestlearn.train.checkpoint import _sha256

    reseal(ckpt, lambda m: m["sha256"].__setitem__(name, _sha256(ckpt / name)))


def crafted_state(env: Env, change: Callable[[dict], None], keep_sum: bool = True) -> Path:
    """The env's state file with its tensors changed (and their checksum recomputed)."""
    from safetensors import safe_open
    from safetensors.torch import save

    from nestlearn.models.state_io import tensors_digest

    with safe_open(str(env.state), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    change(tensors)
    if keep_sum:
        meta["tensors_sha256"] = tensors_digest(tensors)
    path = env.fresh("state").with_suffix(".safetensors")
    path.write_bytes(save(tensors, metadata=meta))
    return path


def crafted_state_meta(env: Env, change: Callable[[dict], None]) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(env.state), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    change(meta)
    path = env.fresh("state").with_suffix(".safetensors")
    path.write_bytes(save(tensors, metadata=meta))
    return path


def data_copy(env: Env, edit: Callable[[Path], None]) -> Path:
    dst = env.fresh("data")
    shutil.copytree(env.data, dst)
    edit(dst)
    return dst


def _meta_edit(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "metadata.json").read_text())
        fn(meta)
        (folder / "metadata.json").write_text(json.dumps(meta))

    return edit


def _oov_shard(folder: Path) -> None:
    meta = json.loads((folder / "metadata.json").read_text())
    shard = folder / meta["shards"][0]["file"]
    ids = np.fromfile(shard, dtype=np.dtype(meta["dtype"]).newbyteorder("<")).copy()
    ids[5::7] = 300  # the byte tokenizer has 259 ids
    ids.tofile(shard)


def _train_run(env: Env, ctx: dict, *extra: str) -> list[str]:
    run = env.run()
    ctx["protect"] = [run]
    return ["train", "--resume", str(run), *extra]


def _ckpt_case(edit: Callable[[Path], None]) -> Callable[[Env, dict], list[str]]:
    def make(env: Env, ctx: dict) -> list[str]:
        run = env.run()
        ckpt = last_ckpt(run)
        edit(ckpt)
        ctx["protect"] = [run]
        return ["eval", "--checkpoint", str(ckpt), "--text", str(env.text), "--tokens", "64"]

    return make


def _wrong_shape_ckpt(ckpt: Path) -> None:
    from safetensors.torch import load_file, save_file

    t = load_file(ckpt / "model.safetensors")
    t["embed.weight"] = torch.zeros(300, 32)
    save_file(t, str(ckpt / "model.safetensors"))
    rehash(ckpt, "model.safetensors")


def _no_ckpts(run: Path) -> None:
    shutil.rmtree(run / "checkpoints")


def _gen(env: Env, ctx: dict, *extra: str) -> list[str]:
    ctx["protect"] = [env.base_run]
    return ["generate", "--checkpoint", str(env.base_run), "--max-new-tokens", "4", *extra]


def _eval_text(env: Env, ctx: dict, content: str, *extra: str) -> list[str]:
    path = env.fresh("text").with_suffix(".txt")
    path.write_text(content)
    ctx["protect"] = [env.base_run]
    return ["eval", "--checkpoint", str(env.base_run), "--text", str(path), *extra]


def _eval_data(env: Env, ctx: dict, edit: Callable[[Path], None]) -> list[str]:
    folder = data_copy(env, edit)
    ctx["protect"] = [env.base_run, folder]
    return ["eval", "--checkpoint", str(env.base_run), "--data", str(folder), "--tokens", "128"]


def _eval_state(env: Env, ctx: dict, state: Path, *extra: str) -> list[str]:
    ctx["protect"] = [env.base_run, state]
    return ["eval", "--checkpoint", str(env.base_run), "--text", str(env.text), "--tokens",
            "64", "--state-in", str(state), *extra]  # fmt: skip


def _set_inf(t: dict) -> None:
    k = sorted(k for k in t if t[k].is_floating_point())[0]
    t[k].view(-1)[0] = float("inf")


def _bad_shape(t: dict) -> None:
    k = sorted(k for k in t if t[k].dim() >= 2 and "weights" in k)[0]
    t[k] = torch.zeros(*t[k].shape[:-1], t[k].shape[-1] + 1)


def _prepare_out_file(env: Env, ctx: dict) -> list[str]:
    f = env.fresh("file")
    f.write_text("not a folder")
    ctx["protect"] = [f]
    return ["prepare", str(env.text), "--out", str(f), "--no-progress"]


def _prepare_damaged(name: str, content: str) -> Callable[[Env, dict], list[str]]:
    def make(env: Env, ctx: dict) -> list[str]:
        out = env.fresh("prep")
        out.mkdir()
        (out / name).write_text(content)
        ctx["protect"] = [out]
        return ["prepare", str(env.text), "--out", str(out), "--no-progress"]

    return make


def _export(env: Env, ctx: dict, out_of: Callable[[Path], Path], force: bool = True) -> list[str]:
    run = env.run()
    ctx["protect"] = [run]
    return ["export", "--checkpoint", str(run), "--out", str(out_of(run)), "--no-verify"] + (
        ["--force"] if force else []
    )


def _export_over_other(env: Env, ctx: dict) -> list[str]:
    other = env.fresh("mine")
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    ctx["protect"] = [other, env.base_run]
    return ["export", "--checkpoint", str(env.base_run), "--out", str(other), "--force"]


def _export_full_disk(env: Env, ctx: dict) -> list[str]:
    from nestlearn.cli import main

    out = env.fresh("export")
    assert (
        main(["export", "--checkpoint", str(env.base_run), "--out", str(out), "--no-verify"]) == 0
    )
    ctx["protect"] = [out, env.base_run]
    return [
        "export",
        "--checkpoint",
        str(env.base_run),
        "--out",
        str(out),
        "--no-verify",
        "--force",
    ]


def _train_new(env: Env, ctx: dict, out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "titans-tiny", "--out", str(out), *SMALL,
            f"data.train={env.data}", *extra]  # fmt: skip


def _train_full_disk(env: Env, ctx: dict) -> list[str]:
    out = ctx.get("target") or env.fresh("full")
    ctx["after"] = lambda: _check_intact_checkpoints(out)
    return _train_new(env, ctx, out, "train.steps=6", "train.ckpt_every=2")


def _check_intact_checkpoints(run: Path) -> str:
    """After a failed write: every checkpoint folder present verifies; no temp folder is left."""
    from nestlearn.train.checkpoint import list_checkpoints, load_checkpoint

    ck = run / "checkpoints"
    if ck.is_dir():
        for p in list_checkpoints(ck):
            load_checkpoint(p)
        left = [p.name for p in ck.iterdir() if p.name.startswith(".")]
        if left:
            return f"leftover {left}"
    return ""


# ---------------------------------------------------------------------------------- the table
# fmt: off
CASES: list[Case] = [
    # ---- train
    Case("train --out holding another run", lambda e, c: _train_over(e, c), 2,
         "already holds a run"),
    Case("train --resume RUN model.dim=128", lambda e, c: _train_run(e, c, "model.dim=128"), 2,
         "does not fit this model"),
    Case("train --resume: checkpoint of wrong tensor shapes",
         lambda e, c: _train_run_edit(e, c, lambda r: _wrong_shape_ckpt(last_ckpt(r))), 2,
         "embed.weight is [300, 32] in the checkpoint"),
    Case("train --resume: config.yaml cut off, no checkpoint", lambda e, c: _train_run_edit(
        e, c, lambda r: (_no_ckpts(r), (r / "config.yaml").write_text(
            (r / "config.yaml").read_text()[:900]))), 2, "config.yaml is damaged"),
    Case("train --resume: config.yaml empty, no checkpoint", lambda e, c: _train_run_edit(
        e, c, lambda r: (_no_ckpts(r), (r / "config.yaml").write_text(""))), 2,
         "config.yaml is damaged (it is empty)"),
    Case("train --resume: config.yaml edited, no checkpoint", lambda e, c: _train_run_edit(
        e, c, lambda r: (_no_ckpts(r), (r / "config.yaml").write_text(
            (r / "config.yaml").read_text().replace("steps: 4", "steps: 1000")))), 2,
         "does not match its checksum"),
    Case("train --resume of a folder that is no run", lambda e, c: ["train", "--resume",
         str(_mkdir(e.fresh("empty")))], 2, "config.yaml is missing"),
    Case("train --resume --force", lambda e, c: _train_run(e, c, "--force"), 2,
         "give one of them"),
    Case("train --config <binary file>", lambda e, c: ["train", "--config",
         str(_write_bytes(e.fresh("cfg.bin"), b"\x7fELF\x00\x01\x02"))], 2, "holds NUL bytes"),
    Case("train --config <latin-1 file>", lambda e, c: ["train", "--config",
         str(_write_bytes(e.fresh("cfg.yaml"), b"train:\n  name: caf\xe9\n"))], 2, "is not UTF-8"),
    Case("train train.seed=-1", lambda e, c: _train_new(e, c, e.fresh("r"), "train.seed=-1"), 2,
         "train.seed must be in"),
    Case("train on prepared ids outside the vocabulary", lambda e, c: _train_new(
        e, c, e.fresh("r"), f"data.train={data_copy(e, _oov_shard)}", "train.steps=3"), 2,
         "outside the model's vocabulary"),
    Case("train, a shard named outside its folder", lambda e, c: _train_new(
        e, c, e.fresh("r"), "data.train=" + str(data_copy(e, _meta_edit(
            lambda m: m["shards"][0].__setitem__("file", "/etc/passwd")))), "train.steps=3"), 2,
         "must be a file name inside the folder"),
    Case("train: disk full during a checkpoint", _train_full_disk, 1, "No space left on device",
         simulate="enospc-checkpoint", real="tmpfs"),
    Case("train --out in a read-only folder", lambda e, c: _train_new(
        e, c, c["target"] / "run", "train.steps=2"), 1, "choose a writable output folder", real="ro"),
    Case("train optim.lr=1e6 train.grad_clip=0 (diverges)", lambda e, c: _diverge(e, c), 1,
         "the run diverged at step"),
    Case("train --resume of a finished run (a no-op)", lambda e, c: _train_run(e, c), 0,
         "is already finished"),
    # ---- prepare
    Case("prepare --out <existing file>", _prepare_out_file, 2, "is a file, not a folder"),
    Case("prepare: progress.json not JSON", _prepare_damaged("progress.json", "{half"), 2,
         "progress.json is damaged"),
    Case("prepare: progress.json of the wrong shape", _prepare_damaged("progress.json",
         '{"next": "x", "fingerprint": 1}'), 2, "progress.json is damaged"),
    Case("prepare: metadata.json not JSON", _prepare_damaged("metadata.json", "\x00\x01"), 2,
         "metadata.json is damaged"),
    Case("prepare --out in a read-only folder", lambda e, c: ["prepare", str(e.text), "--out",
         str(c["target"] / "p"), "--no-progress"], 1, "choose a writable output folder", real="ro"),
    # ---- eval
    Case("eval --text shorter than one window", lambda e, c: _eval_text(e, c, "short text"), 2,
         "no token was scored"),
    Case("eval --text of one character", lambda e, c: _eval_text(e, c, "x"), 2,
         "no token was scored"),
    Case("eval --tokens 0", lambda e, c: _eval_text(e, c, "x" * 500, "--tokens", "0"), 2,
         "--tokens must be positive"),
    Case("eval --seq-len 0", lambda e, c: _eval_text(e, c, "x" * 500, "--seq-len", "0"), 2,
         "--seq-len must be positive"),
    Case("eval --batch-size 0", lambda e, c: _eval_text(e, c, "x" * 500, "--batch-size", "0"), 2,
         "--batch-size must be positive"),
    Case("eval --data with ids outside the vocabulary", lambda e, c: _eval_data(e, c, _oov_shard),
         2, "outside the model's vocabulary"),
    Case("eval --data naming /etc/passwd as a shard", lambda e, c: _eval_data(e, c, _meta_edit(
        lambda m: m["shards"][0].__setitem__("file", "/etc/passwd"))), 2,
         "must be a file name inside the folder"),
    Case("eval --data naming ../x as a shard", lambda e, c: _eval_data(e, c, _meta_edit(
        lambda m: m["shards"][0].__setitem__("file", "../source.txt"))), 2,
         "must be a file name inside the folder"),
    Case("eval --data: metadata.json not JSON", lambda e, c: _eval_data(
        e, c, lambda d: (d / "metadata.json").write_text("{oops")), 2, "is unreadable"),
    Case("eval --data: metadata.json with a bad dtype", lambda e, c: _eval_data(e, c, _meta_edit(
        lambda m: m.__setitem__("dtype", "float64"))), 2, "is not uint8/16/32"),
    Case("eval: checkpoint without its integrity map", _ckpt_case(lambda k: reseal(
        k, lambda m: m.pop("sha256"))), 2, "has no integrity map"),
    Case("eval: integrity map naming /etc/hostname", _ckpt_case(lambda k: reseal(
        k, lambda m: m["sha256"].__setitem__("/etc/hostname", "0" * 64))), 2,
         "only file names inside the checkpoint folder"),
    Case("eval: meta.json with a non-integer step", _ckpt_case(lambda k: reseal(
        k, lambda m: m.__setitem__("step", "four"))), 2,
         "has step 'four'; expected a non-negative integer"),
    Case("eval: meta.json edited without its checksum", _ckpt_case(lambda k: (k / "meta.json")
         .write_text((k / "meta.json").read_text().replace('"step": 4', '"step": 5'))), 2,
         "is corrupted or was edited"),
    Case("eval: meta.json not JSON", _ckpt_case(lambda k: (k / "meta.json").write_text("{")), 2,
         "meta.json is corrupted"),
    Case("eval: version-1 checkpoint without sha256", _ckpt_case(lambda k: reseal(
        k, lambda m: (m.pop("sha256"), m.pop("meta_sha256"), m.__setitem__("format_version", 1)))),
         2, "has no integrity map"),
    Case("eval: a flipped bit in the weights", _ckpt_case(lambda k: _flip(k / "model.safetensors")),
         2, "sha256 mismatch"),
    Case("eval --state-in with inf values", lambda e, c: _eval_state(
        e, c, crafted_state(e, _set_inf)), 2, "non-finite values"),
    Case("eval --state-in with a tensor of the wrong shape", lambda e, c: _eval_state(
        e, c, crafted_state(e, _bad_shape)), 2, "must be [B=1, H=2, d_out, d_in=16], got"),
    Case("eval --state-in with a malformed structure", lambda e, c: _eval_state(
        e, c, crafted_state_meta(e, lambda m: m.__setitem__("structure", '{"tuple": 5}'))), 2,
         "malformed"),
    Case("eval --state-in with a changed tensor (checksum)", lambda e, c: _eval_state(
        e, c, crafted_state(e, _set_inf, keep_sum=False)), 2, "is corrupted"),
    Case("eval --state-in <not a state file>", lambda e, c: _eval_state(
        e, c, _write_bytes(e.fresh("junk"), b"\x00" * 64)), 2, "not a readable state file"),
    Case("eval --state-out onto a folder", lambda e, c: _eval_state(
        e, c, e.state, "--state-out", str(_mkdir(e.fresh("dir")))), 1, "is a folder"),
    Case("eval --state-out in a read-only folder", lambda e, c: _eval_state(
        e, c, e.state, "--state-out", str(c["target"] / "s.safetensors")), 1, "choose a writable output folder",
         real="ro"),
    # ---- generate
    Case("generate --temperature nan", lambda e, c: _gen(e, c, "--temperature", "nan"), 2,
         "--temperature must be a finite number"),
    Case("generate --temperature inf", lambda e, c: _gen(e, c, "--temperature", "inf"), 2,
         "--temperature must be a finite number"),
    Case("generate --temperature -1", lambda e, c: _gen(e, c, "--temperature", "-1"), 2,
         "--temperature must be a finite number"),
    Case("generate --num-samples 0", lambda e, c: _gen(e, c, "--num-samples", "0"), 2,
         "--num-samples must be positive"),
    Case("generate --top-p 0", lambda e, c: _gen(e, c, "--top-p", "0"), 2, "--top-p must be in"),
    Case("generate --top-k 0", lambda e, c: _gen(e, c, "--top-k", "0"), 2,
         "--top-k must be positive"),
    Case("generate --max-new-tokens 0", lambda e, c: _gen(e, c, "--max-new-tokens", "0"), 2,
         "--max-new-tokens must be positive"),
    Case("generate --state-in with inf values", lambda e, c: _gen(
        e, c, "--state-in", str(crafted_state(e, _set_inf))), 2, "non-finite values"),
    # ---- export
    Case("export --out RUN --force", lambda e, c: _export(e, c, lambda r: r), 2,
         "would overwrite the run", needs=("transformers",)),
    Case("export --out RUN/checkpoints/STEP --force", lambda e, c: _export(
        e, c, lambda r: last_ckpt(r)), 2, "would overwrite the run", needs=("transformers",)),
    Case("export --out inside the run", lambda e, c: _export(e, c, lambda r: r / "hf", False), 2,
         "would overwrite the run", needs=("transformers",)),
    Case("export --out <folder holding the run> --force", lambda e, c: _export(
        e, c, lambda r: r.parent), 2, "would overwrite the run", needs=("transformers",)),
    Case("export --force over a folder that is no export", _export_over_other, 2,
         "is not a nestlearn export", needs=("transformers",)),
    Case("export --out <existing file>", lambda e, c: _export(
        e, c, lambda r: _write_bytes(e.fresh("f"), b"x")), 2, "is a file",
         needs=("transformers",)),
    Case("export --out in a read-only folder", lambda e, c: _export(
        e, c, lambda r: c["target"] / "hf", False), 1, "choose a writable output folder", real="ro",
         needs=("transformers",)),
    Case("export: disk full", _export_full_disk, 1, "No space left on device",
         simulate="enospc-export", real="tmpfs-export", needs=("transformers",)),
]
# fmt: on


def _train_over(env: Env, ctx: dict) -> list[str]:
    run = env.run()
    ctx["protect"] = [run]
    return _train_new(env, ctx, run, "train.steps=8")


def _train_run_edit(env: Env, ctx: dict, edit: Callable[[Path], object]) -> list[str]:
    run = env.run()
    edit(run)
    ctx["protect"] = [run]
    return ["train", "--resume", str(run)]


def _diverge(env: Env, ctx: dict) -> list[str]:
    out = env.fresh("diverge")

    def after() -> str:
        from nestlearn.train.checkpoint import load_latest

        ck = load_latest(out / "checkpoints")
        if ck is None:
            return "no checkpoint of the last good step"
        bad = [k for k, t in ck.model.items() if not bool(torch.isfinite(t).all())]
        return f"non-finite weights kept: {bad[:3]}" if bad else ""

    ctx["after"] = after
    return _train_new(env, ctx, out, "optim.lr=1e6", "train.grad_clip=0", "train.steps=40",
                      "schedule.warmup_steps=0")  # fmt: skip


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


def _write_bytes(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _flip(p: Path) -> None:
    blob = bytearray(p.read_bytes())
    blob[-3] ^= 0x10
    p.write_bytes(bytes(blob))


def snapshot(paths: list[Path]) -> dict:
    out = {}
    for root in paths:
        if root.is_file():
            out[str(root)] = root.read_bytes()
        elif root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    out[str(p)] = p.read_bytes()
    return out


# ------------------------------------------------------------------------- the measurement
def _measure(out: Path) -> None:
    """Run every case as a real process and print the table (markdown)."""
    import os
    import subprocess

    env = make_env(out)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    rows, counts = [], {"cases": 0, "as expected": 0, "tracebacks": 0, "silent wrong": 0,
                        "skipped": 0, "overwritten": 0}  # fmt: skip
    for case in CASES:
        ctx: dict = {}
        mounts: list[Path] = []
        if case.simulate and not case.real:
            rows.append((case.name, "-", "-", "skipped: in-process only"))
            counts["skipped"] += 1
            continue
        if case.real in ("tmpfs", "tmpfs-export", "ro"):
            if not is_root:
                rows.append((case.name, "-", "-", "skipped: needs root for a mount"))
                counts["skipped"] += 1
                continue
            target = env.fresh("mnt")
            target.mkdir()
            if case.real.startswith("tmpfs"):
                subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)],
                               check=True)  # fmt: skip
            else:
                subprocess.run(["mount", "--bind", str(target), str(target)], check=True)
                subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
            mounts.append(target)
            ctx["target"] = target
        try:
            if case.real == "tmpfs-export":
                # an earlier export on the small disk, then a second one that cannot fit
                from nestlearn.cli import main

                prev = target / "export"
                code0 = main(["export", "--checkpoint", str(env.base_run), "--out", str(prev),
                              "--no-verify"])  # fmt: skip
                filler = target / "filler"
                free = shutil.disk_usage(target).free
                filler.write_bytes(b"\0" * max(0, free - 4096))
                ctx["protect"] = [prev, env.base_run]
                argv = ["export", "--checkpoint", str(env.base_run), "--out", str(prev),
                        "--no-verify", "--force"]  # fmt: skip
                assert code0 == 0
            else:
                argv = case.make(env, ctx)
            before = snapshot(ctx.get("protect", []))
            pe = dict(os.environ, PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1")
            res = subprocess.run([sys.executable, "-m", "nestlearn.cli", *argv],
                                 capture_output=True, text=True, env=pe, timeout=600)  # fmt: skip
            text = res.stderr + res.stdout
            tb = "Traceback (most recent call last)" in text
            ok_code = res.returncode == case.code
            named = case.needle in text
            same = snapshot(ctx.get("protect", [])) == before
            extra = ctx["after"]() if "after" in ctx else ""
            counts["cases"] += 1
            counts["tracebacks"] += tb
            counts["overwritten"] += not same
            silent = res.returncode == 0 and case.code != 0
            counts["silent wrong"] += silent or bool(extra)
            good = ok_code and named and not tb and same and not extra
            counts["as expected"] += good
            msg = next((ln for ln in text.splitlines() if ln.startswith("error:")), text.strip()
                       .splitlines()[-1] if text.strip() else "")  # fmt: skip
            rows.append((case.name, str(res.returncode), "yes" if good else "NO",
                         msg[:150].replace("|", "/") + (f" [{extra}]" if extra else "")))  # fmt: skip
        finally:
            for m in mounts:
                subprocess.run(["umount", str(m)], check=False)
    print("| case | exit | as expected | message |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print(json.dumps(counts))


def enospc(monkeypatch, what: str) -> None:
    """Install the in-process failure of a case (``Case.simulate``)."""
    if what == "enospc-checkpoint":
        import nestlearn.train.checkpoint as ck

        real = ck.save_file
        calls = [0]

        def full(tensors, filename, *a, **k):
            calls[0] += 1
            if calls[0] >= 3:
                Path(filename).write_bytes(b"\0" * 7)
                raise OSError(errno.ENOSPC, "No space left on device", filename)
            return real(tensors, filename, *a, **k)

        monkeypatch.setattr(ck, "save_file", full)
    elif what == "enospc-export":
        from nestlearn.hf.modeling import NestlearnForCausalLM

        def full(self, folder, *a, **k):
            (Path(folder) / "model.safetensors").write_bytes(b"\0" * 7)
            raise OSError(errno.ENOSPC, "No space left on device", str(folder))

        monkeypatch.setattr(NestlearnForCausalLM, "save_pretrained", full)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    _measure(Path(p.parse_args().out))
