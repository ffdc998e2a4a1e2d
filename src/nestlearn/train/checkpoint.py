"""Checkpoints: safetensors for tensors, JSON and YAML for everything else, written atomically.

Layout of one checkpoint (a folder)::

    <run>/checkpoints/step_00000100/
        model.safetensors     model parameters and persistent buffers
        optim.safetensors     every tensor of the optimizer state (and RNG states)
        config.yaml           the run config the checkpoint was trained with
        meta.json             step, optimizer structure with tensor placeholders, trainer
                              state, sha256 of every other file (the integrity map), and the
                              sha256 of meta.json's own content

Writing: every file goes into a temporary folder ``.tmp-step_...``, is fsynced, and the
folder is renamed into place. If a checkpoint of the same step already exists it is first
renamed aside (``.old-step_...``) and deleted only after the new one is in place, and older
checkpoints are pruned only after that, so at every instant a valid checkpoint exists under
its real name (or, between two renames, under the aside name, which :func:`recover` puts
back). A crash never leaves a half-written checkpoint under a valid name.

Loading parses JSON, YAML (``safe_load``) and safetensors only: no pickle, no code from the
file is ever executed. A checkpoint is refused, naming the file and the reason, when meta.json
is unreadable or edited, when its integrity map is missing or names a path outside the
folder, or when a file does not match its recorded sha256. :func:`load_latest` then uses the
previous one.
"""

from __future__ import annotations

import errno
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
import yaml
from safetensors.torch import load_file, save_file

# module-level names the writer calls through (tests wrap them here to kill a write midway)
from nestlearn.utils.files import fsync_dir as _fsync_dir
from nestlearn.utils.files import fsync_file as _fsync_file
from nestlearn.utils.files import sha256_file as _sha256

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Version 2 adds ``config.yaml`` and meta.json's own checksum; version 1 is still read."""
READABLE_VERSIONS = (1, 2)
TENSOR_FILES = ("model.safetensors", "optim.safetensors")
CONFIG_FILE = "config.yaml"
_STEP_RE = re.compile(r"^step_(\d{8})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted or does not fit the model."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, read-only folder); earlier ones are intact."""


def _meta_digest(meta: dict[str, Any]) -> str:
    """sha256 of meta.json's content without its own ``meta_sha256`` entry."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def step_dir_name(step: int) -> str:
    """The folder name of checkpoint ``step`` (``step_00000100``)."""
    return f"step_{step:08d}"


# ------------------------------------------------------------------ nested structures
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
    """Inverse of :func:`flatten_tensors`; a malformed structure raises :class:`CheckpointError`."""
    if isinstance(obj, dict):
        if len(obj) != 1:
            raise CheckpointError(f"malformed checkpoint entry with keys {sorted(obj)[:5]}")
        ((tag, body),) = obj.items()
        if tag == "__tensor__":
            if not isinstance(body, str) or body not in tensors:
                raise CheckpointError(f"the structure names a missing tensor {str(body)[:60]!r}")
            return tensors[body]
        if tag == "__dict__" and isinstance(body, list):
            out = {}
            for item in body:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], list)
                        and len(item[0]) == 2):  # fmt: skip
                    raise CheckpointError(f"malformed checkpoint dict item {str(item)[:60]!r}")
                (kind, k), v = item
                if kind == "i" and isinstance(k, int) and not isinstance(k, bool):
                    out[k] = unflatten_tensors(v, tensors)
                elif kind == "s" and isinstance(k, str):
                    out[k] = unflatten_tensors(v, tensors)
                else:
                    raise CheckpointError(f"malformed checkpoint dict key {[kind, k]!r}"[:100])
            return out
        if tag == "__tuple__" and isinstance(body, list):
            return tuple(unflatten_tensors(v, tensors) for v in body)
        raise CheckpointError(f"malformed checkpoint entry {tag!r}")
    if isinstance(obj, list):
        return [unflatten_tensors(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"malformed checkpoint value of type {type(obj).__name__}")


@dataclass
class Checkpoint:
    """What a loaded checkpoint holds."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    trainer: dict[str, Any]
    rng: dict[str, torch.Tensor]
    config: dict[str, Any] | None = None
    """The run config stored in the checkpoint (None in version-1 checkpoints)."""


# ----------------------------------------------------------------------------- writing
def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    rng_state: dict[str, torch.Tensor] | None = None,
    keep_last: int = 2,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically under ``ckpt_dir``, then prune old ones.

    ``config`` (the run config as a plain mapping) is stored as ``config.yaml`` inside the
    checkpoint, so a resumed run takes the config its weights were trained with.

    Raises:
        CheckpointWriteError: the folder is not writable or the disk is full; the message
            names the path, and every earlier checkpoint is left as it was.
    """
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / step_dir_name(step)
    tmp = ckpt_dir / f".tmp-{final.name}-{os.getpid()}"
    aside = ckpt_dir / f".old-{final.name}-{os.getpid()}"
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _write_files(tmp, step, model_state, optimizer_state, trainer_state, rng_state, config)
        if final.exists():
            os.replace(final, aside)  # the old copy stays until the new one is in place
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside.exists() and not final.exists():
            os.replace(aside, final)
        # safetensors reports a full disk as its own SafetensorError ("I/O error: ...")
        if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":
            raise CheckpointWriteError(_write_error(final, e)) from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside.exists() and not final.exists():
            os.replace(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    prune(ckpt_dir, keep_last, newest=final)
    return final


def _write_error(final: Path, e: Exception) -> str:
    if not isinstance(e, OSError):
        return (
            f"cannot write checkpoint {final}: {e}; earlier checkpoints are intact. Free disk "
            "space or make the folder writable, then continue with --resume"
        )
    what = e.strerror or str(e)
    where = e.filename or final
    fix = {
        errno.ENOSPC: "free disk space",
        errno.EDQUOT: "free disk space (quota exceeded)",
        errno.EFBIG: "raise the file-size limit (ulimit -f)",
        errno.EROFS: "make the folder writable",
        errno.EACCES: "make the folder writable",
        errno.EPERM: "make the folder writable",
    }.get(e.errno or 0, "fix the folder")
    return (
        f"cannot write checkpoint {final}: {what} ({where}); earlier checkpoints are intact. "
        f"{fix.capitalize()}, then continue with --resume"
    )


def _write_files(
    tmp: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    trainer_state: dict[str, Any] | None,
    rng_state: dict[str, torch.Tensor] | None,
    config: dict[str, Any] | None,
) -> None:
    model_t = {k: v.detach().cpu().contiguous().clone() for k, v in model_state.items()}
    save_file(model_t, str(tmp / "model.safetensors"))
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_struct = flatten_tensors(optimizer_state, opt_tensors, "optim") if optimizer_state else None
    rng_struct = flatten_tensors(rng_state or {}, opt_tensors, "rng")
    save_file(opt_tensors, str(tmp / "optim.safetensors"))
    files = list(TENSOR_FILES)
    if config is not None:
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        files.append(CONFIG_FILE)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "optimizer": opt_struct,
        "rng": rng_struct,
        "trainer": trainer_state or {},
        "sha256": {name: _sha256(tmp / name) for name in files},
    }
    meta["meta_sha256"] = _meta_digest(meta)
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    for f in tmp.iterdir():
        _fsync_file(f)
    _fsync_dir(tmp)


def prune(ckpt_dir: str | Path, keep_last: int, newest: Path | None = None) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints (never ``newest``, never one newer
    than ``newest``); returns the deleted folders."""
    found = list_checkpoints(ckpt_dir)
    if newest is not None:
        limit = _step_of(newest)
        found = [p for p in found if _step_of(p) <= limit]
    doomed = found[:-keep_last] if keep_last > 0 else []
    doomed = [p for p in doomed if newest is None or p != newest]
    for old in doomed:
        shutil.rmtree(old, ignore_errors=True)
    return doomed


def _step_of(path: Path) -> int:
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else -1


def recover(ckpt_dir: str | Path) -> list[str]:
    """Tidy ``ckpt_dir`` after a crash: delete half-written ``.tmp-*`` folders and put back a
    checkpoint renamed aside (``.old-step_*``) whose replacement never arrived. Call it when no
    other process writes there. Returns what was done, one line each."""
    ckpt_dir = Path(ckpt_dir)
    done: list[str] = []
    if not ckpt_dir.is_dir():
        return done
    for p in sorted(ckpt_dir.iterdir()):
        if p.name.startswith(".tmp-"):
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed the half-written {p.name}")
        elif p.name.startswith(".old-step_"):
            name = p.name[len(".old-") :].rsplit("-", 1)[0]
            if _STEP_RE.match(name) and not (ckpt_dir / name).exists():
                os.replace(p, ckpt_dir / name)
                done.append(f"restored {name} (its replacement was cut off)")
            else:
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed the superseded {p.name}")
    for line in done:
        logger.warning("%s: %s", ckpt_dir, line)
    return done


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoint folders under ``ckpt_dir``, oldest first (temporary folders excluded)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and _STEP_RE.match(p.name)]
    return sorted(found, key=_step_of)


# ----------------------------------------------------------------------------- reading
def read_meta(path: str | Path) -> dict[str, Any]:
    """meta.json of checkpoint folder ``path``, checked: version, step, integrity map (names
    inside the folder, sha256 digests) and, from version 2 on, its own checksum."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{path} has no meta.json: not a nestlearn checkpoint")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{meta_path} is corrupted ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} is corrupted (not a JSON object)")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise CheckpointError(
            f"{path} has format version {version!r}; this nestlearn reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    if version >= 2 and meta.get("meta_sha256") != _meta_digest(meta):
        raise CheckpointError(f"{meta_path} is corrupted or was edited (its checksum differs)")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{meta_path} has step {step!r}; expected a non-negative integer")
    if _STEP_RE.match(path.name) and _step_of(path) != step:
        raise CheckpointError(f"{meta_path} says step {step} but the folder is {path.name}")
    digests = meta.get("sha256")
    if not isinstance(digests, dict) or not digests:
        raise CheckpointError(
            f"{meta_path} has no integrity map (sha256); the checkpoint cannot be verified. "
            "Use an earlier checkpoint or retrain"
        )
    for name, digest in digests.items():
        if not _NAME_RE.match(name) or name == "meta.json":
            raise CheckpointError(
                f"{meta_path} lists {name[:80]!r} in its integrity map; only file names inside "
                "the checkpoint folder are allowed"
            )
        if not isinstance(digest, str) or not _HEX_RE.match(digest):
            raise CheckpointError(f"{meta_path} has a malformed sha256 for {name}")
    for name in TENSOR_FILES:
        if name not in digests:
            raise CheckpointError(f"{meta_path}: the integrity map does not cover {name}")
    if not isinstance(meta.get("trainer", {}), dict):
        raise CheckpointError(f"{meta_path}: 'trainer' is not a mapping")
    return meta


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify one checkpoint folder; raises :class:`CheckpointError` if damaged."""
    path = Path(path)
    meta = read_meta(path)
    for name, digest in meta["sha256"].items():
        f = path / name
        if not f.is_file() or f.is_symlink():
            raise CheckpointError(f"{f} is missing")
        try:
            ok = _sha256(f) == digest
        except OSError as e:
            raise CheckpointError(f"{f} is unreadable ({e})") from e
        if not ok:
            raise CheckpointError(f"{f} is corrupted (sha256 mismatch)")
    try:
        model = load_file(str(path / "model.safetensors"), device=str(map_location))
        tensors = load_file(str(path / "optim.safetensors"), device=str(map_location))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: tensor file unreadable ({e})") from e
    try:
        optim = unflatten_tensors(meta["optimizer"], tensors) if meta.get("optimizer") else None
        rng = unflatten_tensors(meta.get("rng") or {"__dict__": []}, tensors)
    except CheckpointError as e:
        raise CheckpointError(f"{path / 'meta.json'}: {e}") from None
    if optim is not None and not isinstance(optim, dict):
        raise CheckpointError(f"{path / 'meta.json'}: the optimizer state is not a mapping")
    if not isinstance(rng, dict) or not all(isinstance(v, torch.Tensor) for v in rng.values()):
        raise CheckpointError(f"{path / 'meta.json'}: the RNG state is malformed")
    config = None
    if CONFIG_FILE in meta["sha256"]:
        try:
            config = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError) as e:
            raise CheckpointError(f"{path / CONFIG_FILE} is unreadable ({e})") from e
        if not isinstance(config, dict):
            raise CheckpointError(f"{path / CONFIG_FILE} does not hold a config mapping")
    return Checkpoint(path, meta["step"], model, optim, meta.get("trainer", {}), rng, config)


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
            logger.warning("using the previous good checkpoint %s", path)
        return ckpt
    if problems:
        raise CheckpointError("no usable checkpoint: " + "; ".join(problems))
    return None


def set_aside_newer(ckpt_dir: str | Path, step: int) -> list[Path]:
    """Rename checkpoints newer than ``step`` (they failed verification, or a resume would have
    used them) to ``damaged-step_*`` so pruning never keeps them instead of good ones."""
    moved = []
    for p in list_checkpoints(ckpt_dir):
        if _step_of(p) > step:
            dest = p.with_name(f"damaged-{p.name}")
            if dest.exists():
                shutil.rmtree(dest, ignore_errors=True)
            os.replace(p, dest)
            logger.warning("set aside the damaged checkpoint %s as %s", p, dest.name)
            moved.append(dest)
    return moved
