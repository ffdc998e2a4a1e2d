"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

Layout of one checkpoint (a folder)::

    <run>/checkpoints/step_00000100/
        model.safetensors     model parameters and persistent buffers
        optim.safetensors     every tensor of the optimizer state (and RNG states)
        meta.json             step, optimizer structure with tensor placeholders, trainer
                              state, sha256 of both tensor files

A checkpoint is written into a temporary folder, every file fsynced, then renamed into
place, so a crash never leaves a half-written checkpoint under a valid name. Loading parses
JSON and safetensors only: no pickle, no code from the file is ever executed. A checkpoint
whose files do not match the recorded sha256 is reported and the previous one is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted or does not fit the model."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def flatten_tensors(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Replace every tensor in a nested structure by ``{"__tensor__": key}``.

    Dict keys become strings tagged with their type so integer keys (optimizer state is
    keyed by parameter index) survive the JSON round trip.
    """
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {
            "__dict__": [[_key_out(k), flatten_tensors(v, tensors, prefix)] for k, v in obj.items()]
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_tensors(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [flatten_tensors(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} in a checkpoint: {obj!r}")


def _key_out(k: Any) -> list:
    if isinstance(k, bool) or not isinstance(k, (int, str)):
        raise CheckpointError(f"unsupported state key {k!r}")
    return ["i", k] if isinstance(k, int) else ["s", k]


def unflatten_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_tensors`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {
                (int(k) if kind == "i" else k): unflatten_tensors(v, tensors)
                for (kind, k), v in obj["__dict__"]
            }
        if "__tuple__" in obj:
            return tuple(unflatten_tensors(v, tensors) for v in obj["__tuple__"])
        raise CheckpointError(f"malformed checkpoint entry {sorted(obj)}")
    if isinstance(obj, list):
        return [unflatten_tensors(v, tensors) for v in obj]
    return obj


@dataclass
class Checkpoint:
    """What a loaded checkpoint holds."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    trainer: dict[str, Any]
    rng: dict[str, torch.Tensor]


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    rng_state: dict[str, torch.Tensor] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically under ``ckpt_dir`` and prune old ones."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:08d}"
    tmp = ckpt_dir / f".tmp-step_{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        model_t = {k: v.detach().cpu().contiguous().clone() for k, v in model_state.items()}
        save_file(model_t, str(tmp / "model.safetensors"))
        opt_tensors: dict[str, torch.Tensor] = {}
        opt_struct = (
            flatten_tensors(optimizer_state, opt_tensors, "optim") if optimizer_state else None
        )
        rng_struct = flatten_tensors(rng_state or {}, opt_tensors, "rng")
        save_file(opt_tensors, str(tmp / "optim.safetensors"))
        meta = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "optimizer": opt_struct,
            "rng": rng_struct,
            "trainer": trainer_state or {},
            "sha256": {
                "model.safetensors": _sha256(tmp / "model.safetensors"),
                "optim.safetensors": _sha256(tmp / "optim.safetensors"),
            },
        }
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoint folders under ``ckpt_dir``, oldest first (temporary folders excluded)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and _STEP_RE.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_RE.match(p.name).group(1)))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify one checkpoint folder; raises :class:`CheckpointError` if damaged."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{path} has no meta.json: not a nestlearn checkpoint")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} is corrupted ({e})") from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {meta.get('format_version')}, this nestlearn reads "
            f"{FORMAT_VERSION}"
        )
    for name, digest in meta.get("sha256", {}).items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f} is corrupted (sha256 mismatch)")
    try:
        model = load_file(str(path / "model.safetensors"), device=str(map_location))
        tensors = load_file(str(path / "optim.safetensors"), device=str(map_location))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: tensor file unreadable ({e})") from e
    optim = unflatten_tensors(meta["optimizer"], tensors) if meta.get("optimizer") else None
    rng = unflatten_tensors(meta.get("rng") or {"__dict__": []}, tensors)
    return Checkpoint(path, int(meta["step"]), model, optim, meta.get("trainer", {}), rng)


def load_latest(
    ckpt_dir: str | Path, map_location: str | torch.device = "cpu"
) -> Checkpoint | None:
    """The newest checkpoint that verifies; damaged ones are reported and skipped.

    Returns ``None`` when the folder holds no checkpoint at all; raises when every
    checkpoint present is damaged, naming each and why.
    """
    found = list_checkpoints(ckpt_dir)
    problems = []
    for path in reversed(found):
        try:
            ckpt = load_checkpoint(path, map_location)
        except CheckpointError as e:
            logger.error("skipping checkpoint %s: %s", path.name, e)
            problems.append(str(e))
            continue
        if problems:
            logger.warning("resuming from the previous good checkpoint %s", path)
        return ckpt
    if problems:
        raise CheckpointError("no usable checkpoint: " + "; ".join(problems))
    return None
