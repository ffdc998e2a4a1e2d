"""Per-sequence state files: save a :class:`ModelState` after one call, restore it for the next.

A model that learns in context (Titans, Hope, CMS) keeps what it learned in its per-sequence
state, not in its parameters. Saving that state lets a later process continue the same stream:
``load_state`` then ``model(idx, state=...)`` equals one uninterrupted call over both parts.

File format (one safetensors file, written to a temporary name and renamed into place):

* tensors: every tensor of the state, named by its path (``layers.0.0.inner.weights.1``),
  stored as is (dtype and shape), detached and on the CPU;
* metadata (all strings): ``format = "nestlearn-state"``, ``version``, ``family``,
  ``config`` (the model config as JSON), ``config_hash`` (sha256 of that JSON), ``weights``
  (a fingerprint of the parameters), ``batch_size``, ``source`` (a free label, e.g. the
  checkpoint path), ``tensors_sha256`` (of every tensor's name, dtype, shape and bytes: a
  damaged file is refused; files written before it existed are read without) and
  ``structure``: the state's tree as JSON, whose leaves are ``null``,
  numbers, booleans, strings or references to tensors, and whose inner nodes are tuples, lists,
  str-keyed dicts, NamedTuples and dataclasses named by ``module:qualname``.

Loading parses JSON and safetensors only. A class named in ``structure`` is looked up among
modules that are already imported (none is imported on the file's behalf) and must be a
NamedTuple or dataclass of nestlearn's (or of the model's state) with exactly the recorded
fields; nothing else is ever constructed. The loaded tree must then fit the model: the same
kinds of nodes as ``model.init_state``, tensors of the same shapes (a KV cache's time axis may
grow) and only finite values; anything else is refused with the tensor's path and the fix.

A state fits a model when the family and config hash match (the state's shapes follow from
the config) and, by default, the parameter fingerprint matches too (a state written by another
checkpoint of the same shape is almost always a mistake). The batch size is the leading dim of
the state's tensors; :func:`load_state` checks it when asked.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nestlearn.models.skeleton import LanguageModel, ModelState
from nestlearn.models.state_check import (
    StateFileError,
    is_namedtuple,
    mismatch,
    nestlearn_state_classes,
    probe,
    state_classes,
)
from nestlearn.utils.files import atomic_write_bytes

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "StateFileError",
    "config_hash",
    "load_state",
    "read_state",
    "read_state_info",
    "save_state",
    "weights_fingerprint",
]

FORMAT = "nestlearn-state"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- fingerprints
def _config_json(model: LanguageModel) -> str:
    return json.dumps(model.cfg.to_dict(), sort_keys=True, default=str)


def config_hash(model: LanguageModel) -> str:
    """sha256 (first 16 hex digits) of the model config as sorted JSON."""
    return hashlib.sha256(_config_json(model).encode()).hexdigest()[:16]


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> str:
    """A cheap fingerprint of the parameters: names, shapes, dtypes and up to 64 evenly spaced
    values of each tensor (sha256, first 16 hex digits). Cost: O(number of tensors)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 64)
        sample = flat[::step][:64].to("cpu", torch.float64)
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of a state file's tensors (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- flatten
def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """The JSON node of ``obj``; tensors are moved into ``tensors`` under their path."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)):
        # bool is handled above; JSON keeps ints and floats apart (1 vs 1.0)
        return {"float": obj} if isinstance(obj, float) else obj
    if isinstance(obj, torch.Tensor):
        key = path or "state"
        # contiguous copies on the CPU: safetensors refuses views and shared storage, and a
        # fresh state's weights are expand() views of the parameters
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"tensor": key}
    sub = f"{path}." if path else ""
    if is_namedtuple(obj):
        fields = {f: _flatten(getattr(obj, f), sub + f, tensors) for f in type(obj)._fields}
        return {"namedtuple": _qualname(type(obj)), "fields": fields}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {
            f.name: _flatten(getattr(obj, f.name), sub + f.name, tensors)
            for f in dataclasses.fields(obj)
            if f.init  # the rest is derived by the constructor
        }
        return {"dataclass": _qualname(type(obj)), "fields": fields}
    if isinstance(obj, (tuple, list)):
        items = [_flatten(o, f"{sub}{i}", tensors) for i, o in enumerate(obj)]
        return {"tuple" if isinstance(obj, tuple) else "list": items}
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"dict": {k: _flatten(v, sub + k, tensors) for k, v in obj.items()}}
    raise TypeError(
        f"cannot save a {type(obj).__name__} at state path {path!r}; a state holds tensors, "
        "numbers, strings, None, tuples, lists, str-keyed dicts, NamedTuples and dataclasses"
    )


def _resolve_class(name: str, kind: str, allowed: frozenset[type]) -> type:
    module_name, _, qual = name.partition(":")
    module = sys.modules.get(module_name)
    if module is None or not qual:
        raise StateFileError(
            f"the state file names {kind} {name!r}, whose module is not loaded; it was written "
            "by a model with other layers (load it with the model that wrote it)"
        )
    obj: Any = module
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type):
        raise StateFileError(f"the state file names {kind} {name!r}, which does not exist")
    if kind == "namedtuple" and not (issubclass(obj, tuple) and hasattr(obj, "_fields")):
        raise StateFileError(f"{name!r} in the state file is not a NamedTuple")
    if kind == "dataclass" and not dataclasses.is_dataclass(obj):
        raise StateFileError(f"{name!r} in the state file is not a dataclass")
    if obj not in allowed:  # only the state classes of the model at hand are ever constructed
        raise StateFileError(
            f"the state file names {kind} {name!r}, which this model's state does not use"
        )
    return obj


def _unflatten(node: Any, tensors: dict[str, torch.Tensor], allowed: frozenset[type]) -> Any:
    if node is None or isinstance(node, (bool, str, int)):
        return node
    if isinstance(node, list):  # never written: containers are tagged dicts
        raise StateFileError("malformed state structure (bare JSON list)")
    if not isinstance(node, dict) or len(node) not in (1, 2):
        raise StateFileError(f"malformed state structure node {str(node)[:80]!r}")
    if "float" in node:
        if isinstance(node["float"], bool) or not isinstance(node["float"], (int, float)):
            raise StateFileError(f"malformed float node {str(node)[:80]!r}")
        return float(node["float"])
    if "tensor" in node:
        key = node["tensor"]
        if not isinstance(key, str) or key not in tensors:
            raise StateFileError(
                f"the state structure refers to a missing tensor {str(key)[:80]!r}"
            )
        return tensors[key]
    for kind in ("tuple", "list"):
        if kind in node:
            if not isinstance(node[kind], list):
                raise StateFileError(f"malformed {kind} node {str(node)[:80]!r}")
            items = [_unflatten(n, tensors, allowed) for n in node[kind]]
            return tuple(items) if kind == "tuple" else items
    if "dict" in node:
        if not isinstance(node["dict"], dict):
            raise StateFileError(f"malformed dict node {str(node)[:80]!r}")
        return {k: _unflatten(v, tensors, allowed) for k, v in node["dict"].items()}
    for kind in ("namedtuple", "dataclass"):
        if kind in node:
            if not isinstance(node[kind], str) or not isinstance(node.get("fields", {}), dict):
                raise StateFileError(f"malformed {kind} node {str(node)[:80]!r}")
            cls = _resolve_class(node[kind], kind, allowed)
            saved = node.get("fields", {})
            if kind == "namedtuple":
                expected = list(cls._fields)  # type: ignore[attr-defined]
            else:
                expected = [f.name for f in dataclasses.fields(cls) if f.init]
            if sorted(saved) != sorted(expected):
                raise StateFileError(
                    f"{node[kind]} has fields {expected} in this version of the code but "
                    f"{sorted(saved)} in the state file; re-create the state file"
                )
            return cls(**{k: _unflatten(v, tensors, allowed) for k, v in saved.items()})
    raise StateFileError(f"malformed state structure node {str(node)[:80]!r}")


def _infer_batch(tensors: dict[str, torch.Tensor]) -> int | None:
    sizes = {t.shape[0] for t in tensors.values() if t.dim() > 0}
    if len(sizes) > 1:
        raise ValueError(
            f"the state's tensors have leading dims {sorted(sizes)}, so its batch size is "
            "ambiguous; pass batch_size= to save_state"
        )
    return sizes.pop() if sizes else None


# ----------------------------------------------------------------------------- save / load
def save_state(
    state: ModelState,
    path: str | Path,
    model: LanguageModel,
    *,
    batch_size: int | None = None,
    source: str = "",
) -> Path:
    """Write ``state`` (a :class:`ModelState` of ``model``) to ``path`` atomically.

    Args:
        state: the state returned by ``model(..., state=..., return_state=True)``.
        path: the file to write (conventionally ``*.safetensors``); parent folders are created.
        model: the model the state belongs to (its family, config and weights are recorded).
        batch_size: sequences in the state; inferred from the tensors' leading dim when None.
        source: a free label stored in the file and quoted in errors (e.g. the checkpoint).
    Returns:
        ``path`` as a :class:`Path`.
    """
    from safetensors.torch import save

    if not isinstance(state, ModelState):
        raise TypeError(f"save_state expects a ModelState, got {type(state).__name__}")
    if getattr(state, "pending", None) is not None:
        raise ValueError(
            "this state holds the next-token term of its last token (cms.objective=ntp), which "
            "needs the token that follows and the autograd graph of its window, so it cannot be "
            "saved; continue the stream in the same process, or freeze the memory "
            "(--freeze-memory, set_memory_frozen) or use cms.objective=next to save states"
        )
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, "", tensors)
    if batch_size is None:
        batch_size = _infer_batch(tensors)
    meta = {
        "format": FORMAT,
        "version": str(FORMAT_VERSION),
        "family": model.cfg.family,
        "config": _config_json(model),
        "config_hash": config_hash(model),
        "weights": weights_fingerprint(model),
        "batch_size": json.dumps(batch_size),
        "source": source,
        "structure": json.dumps(structure, separators=(",", ":")),
        "tensors_sha256": tensors_digest(tensors),
    }
    blob = save(tensors, metadata=meta)
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, blob)
    except OSError as e:  # name the file asked for, not the temporary one
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    return path


def read_state_info(path: str | Path) -> dict[str, Any]:
    """The metadata of a state file (``family``, ``config`` as a dict, ``batch_size``, ...)
    without reading its tensors. Raises :class:`StateFileError` for anything else."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"state file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise StateFileError(
            f"{path} is not a readable state file ({e}); re-create it with --state-out / save_state"
        ) from None
    if meta.get("format") != FORMAT:
        raise StateFileError(
            f"{path} is a safetensors file but not a nestlearn state file "
            f"(format {meta.get('format')!r}); write one with --state-out / save_state"
        )
    if meta.get("version") != str(FORMAT_VERSION):
        raise StateFileError(
            f"{path} has state format version {meta.get('version')}; this nestlearn reads "
            f"version {FORMAT_VERSION}. Re-create the state file"
        )
    try:
        info: dict[str, Any] = dict(meta)
        info["config"] = json.loads(meta["config"])
        info["batch_size"] = json.loads(meta["batch_size"])
        info["structure"] = json.loads(meta["structure"])
    except (KeyError, ValueError, RecursionError) as e:
        raise StateFileError(f"{path} has damaged metadata ({e}); re-create it") from None
    b = info["batch_size"]
    problems = [
        "config is not a mapping" if not isinstance(info["config"], dict) else "",
        "structure is not a tagged mapping" if not isinstance(info["structure"], dict) else "",
        f"batch_size is {b!r}"
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1)
        else "",
        "family is missing" if not isinstance(info.get("family"), str) else "",
    ]
    problems = [x for x in problems if x]
    if problems:
        raise StateFileError(f"{path} has damaged metadata ({'; '.join(problems)}); re-create it")
    return info


def _describe(family: str, chash: str, source: str) -> str:
    where = f" from {source}" if source else ""
    return f"a {family} model (config {chash}){where}"


def _config_diff(saved: dict[str, Any], here: dict[str, Any]) -> str:
    keys = sorted(set(saved) | set(here))
    diff = [f"{k}={saved.get(k)!r} in the file, {here.get(k)!r} here" for k in keys
            if saved.get(k) != here.get(k)]  # fmt: skip
    return "; ".join(diff[:6])


def load_state(
    path: str | Path,
    model: LanguageModel,
    *,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    check_weights: bool = True,
    name: str = "",
) -> ModelState:
    """Read a state written by :func:`save_state` for ``model``.

    Args:
        path: the state file.
        model: the model that will continue the stream.
        batch_size: the batch the caller will run; a state of another batch size is refused.
        device: where the tensors go (default: the model's device).
        check_weights: refuse a state written by a model with other parameter values.
        name: how to call ``model`` in error messages (e.g. its checkpoint path).
    Raises:
        StateFileError: unreadable file, another format or version, another family or config,
            other weights, or a batch-size mismatch; the message names both models.
    """
    path = Path(path)
    info = read_state_info(path)
    here = _describe(model.cfg.family, config_hash(model), name)
    there = _describe(info.get("family", "?"), info.get("config_hash", "?"), info.get("source", ""))
    if info.get("family") != model.cfg.family or info.get("config_hash") != config_hash(model):
        diff = _config_diff(info["config"], model.cfg.to_dict())
        raise StateFileError(
            f"state file {path} was written by {there}, but this is {here}"
            + (f" ({diff})" if diff else "")
            + "; use the model that wrote it, or start without --state-in"
        )
    if check_weights and info.get("weights") != weights_fingerprint(model):
        raise StateFileError(
            f"state file {path} was written by {there}, whose weights differ from {here} "
            "(same shape, another checkpoint); use the checkpoint that wrote it"
        )
    saved_b = info["batch_size"]
    if batch_size is not None and saved_b is not None and saved_b != batch_size:
        raise StateFileError(
            f"state file {path} holds {saved_b} sequence(s) but this call runs {batch_size}; "
            f"run with batch size {saved_b} or start without the state"
        )
    device = device or model.embed.weight.device
    fresh = model.init_state(saved_b or batch_size or 1, device=torch.device(device))
    allowed = state_classes(fresh) | frozenset(nestlearn_state_classes())
    state = _read_tree(path, info, device, allowed)
    if not isinstance(state.layers, list) or len(state.layers) != len(model.blocks):
        raise StateFileError(f"{path} does not hold a ModelState for {len(model.blocks)} blocks")
    problem = mismatch(fresh, state, "")
    if problem:
        raise StateFileError(
            f"state file {path} does not fit {here}: {problem}; re-create it with this model "
            "(--state-out / save_state), or start without it"
        )
    if (
        not isinstance(state.position, int)
        or isinstance(state.position, bool)
        or state.position < 0
    ):
        raise StateFileError(f"{path} has position {state.position!r}; re-create the state file")
    probe(model, state, path, here)
    return state


def read_state(
    path: str | Path, device: torch.device | str = "cpu", *, classes: tuple[type, ...] = ()
) -> ModelState:
    """The :class:`ModelState` stored in ``path`` as it is, not checked against any model (to
    inspect a file; :func:`load_state` is what continues a stream). Only NamedTuples and
    dataclasses defined in ``nestlearn`` modules, or listed in ``classes``, are constructed."""
    allowed = frozenset(classes) | frozenset(nestlearn_state_classes())
    return _read_tree(Path(path), read_state_info(path), device, allowed)


def _read_tree(
    path: Path, info: dict[str, Any], device: torch.device | str, allowed: frozenset[type]
) -> ModelState:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:
        raise StateFileError(f"{path} has unreadable tensors ({e}); re-create it") from None
    want = info.get("tensors_sha256")  # absent in files written before it was recorded
    if want is not None and want != tensors_digest(tensors):
        raise StateFileError(
            f"{path} is corrupted (its tensors do not match their sha256); re-create it"
        )
    tensors = {k: t.to(device) for k, t in tensors.items()}
    try:
        state = _unflatten(info["structure"], tensors, allowed | {ModelState})
    except StateFileError as e:
        raise StateFileError(f"{path}: {e}; re-create the state file") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as e:
        raise StateFileError(
            f"{path} has a malformed state structure ({type(e).__name__}: {str(e)[:120]}); "
            "re-create the state file"
        ) from None
    if not isinstance(state, ModelState):
        raise StateFileError(f"{path} does not hold a ModelState; re-create the state file")
    return state
