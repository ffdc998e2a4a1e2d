"""Is the memory learning? Cheap statistics of a model's memory modules for the tracker.

Read from the model's public surface, so they work for every family with memory modules
(Titans, its MAC/MAG/MAL variants, Hope, the CMS: every module with ``set_memory_frozen``) and never need the trainer to know a
family:

* **memory norms**: one probe sequence (``[1, T]``, e.g. the first validation window) runs in
  two halves with the per-sequence state threaded through (``model(x, return_state=True)``).
  For every memory tensor in the state (fields named ``weights``: Titans / Hope / TTT memories,
  ``delta``: CMS fast weights minus their initial value) ``mem/<where>/norm`` is its Frobenius
  norm after the whole sequence and ``mem/<where>/update`` how far the second half moved it
  (``||S_T - S_{T/2}||``): zero means the memory is not being written.
* **inner step sizes**: each CMS level's learning rate (``ContinuumMemory.lrs()``) as
  ``mem/<where>/lr.<level>``, and for Titans / Hope memories the learned baseline of the
  data-dependent inner step, ``max_lr * sigmoid(bias)`` averaged over heads
  (``mem/<where>/step_at_bias``; the step of a token moves around it with its input).

``<where>`` is ``L<block>.<mixer|ffn>[.<sub>]...``. A model with no memory module yields ``{}``.
The cost is one forward pass over ``T`` tokens without gradients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from nestlearn.models.freeze import memory_modules

logger = logging.getLogger(__name__)

_MEMORY_FIELDS = ("weights", "delta")


def _walk(obj: Any, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """``(path, tensor)`` of every tensor in a nested state (NamedTuples, dataclasses, tuples)."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):
        for name in obj._fields:
            yield from _walk(getattr(obj, name), f"{path}.{name}")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _walk(getattr(obj, f.name), f"{path}.{f.name}")
    elif isinstance(obj, (tuple, list)):
        for i, o in enumerate(obj):
            yield from _walk(o, f"{path}.{i}")


def _memory_tensors(state: Any, has_memory: list[tuple[bool, bool]]) -> dict[str, torch.Tensor]:
    """Memory tensors of a ModelState, by path, grouped up to the ``weights``/``delta`` field."""
    out: dict[str, list[torch.Tensor]] = {}
    for i, (ms, fs) in enumerate(state.layers):
        for part, st, keep in (("mixer", ms, has_memory[i][0]), ("ffn", fs, has_memory[i][1])):
            if not keep:
                continue
            for path, t in _walk(st, f"L{i}.{part}"):
                names = path.split(".")
                hit = [j for j, n in enumerate(names) if n in _MEMORY_FIELDS]
                if hit:
                    out.setdefault(".".join(names[: hit[0] + 1]), []).append(t.detach().float())
    return {k: torch.cat([t.reshape(-1) for t in v]) for k, v in out.items()}


def _short(name: str) -> str:
    """``blocks.3.ffn.levels`` -> ``L3.ffn.levels``."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "blocks":
        return ".".join([f"L{parts[1]}", *parts[2:]])
    return name


def step_sizes(model: nn.Module) -> dict[str, float]:
    """Per-level learning rates (CMS) and inner-step baselines (Titans, Hope), by module."""
    out: dict[str, float] = {}
    mems = {id(m) for m in memory_modules(model)}
    for name, m in model.named_modules():
        if id(m) not in mems:
            continue
        where = _short(name)
        try:
            lrs = getattr(m, "lrs", None)
            if callable(lrs) and getattr(m, "in_context", True):
                for k, v in enumerate(lrs().detach().float().reshape(-1).tolist()):
                    out[f"mem/{where}/lr.{k}"] = v
            max_lr = getattr(m, "max_lr", None)
            bias = getattr(m, "eta_bias", None)
            if bias is None:
                gb = getattr(m, "gate_bias", None)
                bias = gb[0] if isinstance(gb, torch.Tensor) and gb.ndim == 2 else None
            if isinstance(max_lr, (int, float)) and isinstance(bias, torch.Tensor):
                val = max_lr * torch.sigmoid(bias.detach().float()).mean().item()
                out[f"mem/{where}/step_at_bias"] = val
        except Exception as e:  # a statistic must never stop training
            logger.debug("no step sizes for %s: %s", name, e)
    return out


@torch.no_grad()
def memory_stats(
    model: nn.Module,
    tokens: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> dict[str, float]:
    """Memory norms, second-half updates and step sizes of ``model`` on ``tokens [1, T]``.

    Returns ``{}`` for a model without memory modules (e.g. Transformer++).
    """
    if not memory_modules(model) or not hasattr(model, "blocks"):
        return {}
    has_memory = [
        tuple(
            mod is not None and bool(memory_modules(mod))
            for mod in (getattr(b, "mixer", None), getattr(b, "ffn", None))
        )
        for b in model.blocks  # type: ignore[attr-defined]
    ]
    out = step_sizes(model)
    T = tokens.shape[1]
    if T < 2:
        return out
    was_training = model.training
    model.eval()
    ctx = autocast or contextlib.nullcontext
    try:
        with ctx():
            _, s1 = model(tokens[:, : T // 2], return_state=True)
            half = {k: v.clone() for k, v in _memory_tensors(s1, has_memory).items()}  # type: ignore[arg-type]
            _, s2 = model(tokens[:, T // 2 :], state=s1)
        end = _memory_tensors(s2, has_memory)  # type: ignore[arg-type]
    except Exception as e:
        logger.warning("memory statistics skipped: %s", e)
        return out
    finally:
        model.train(was_training)
    for key, t in end.items():
        before = half.get(key)
        out[f"mem/{key}/norm"] = float(t.norm())
        if before is not None and before.shape == t.shape:
            out[f"mem/{key}/update"] = float((t - before).norm())
        else:  # e.g. a CMS level still at its initial weights after the first half
            out[f"mem/{key}/update"] = float(t.norm())
    return {k: v for k, v in out.items() if math.isfinite(v)}
