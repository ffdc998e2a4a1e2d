"""Strict typed configs: build a dataclass from a plain mapping (YAML, ``model.mixer``, ``cms``).

The one place that checks config keys and value types, used by every floor that reads options:
``train`` (the run config), ``models`` (each family's ``model.mixer`` options), ``memory`` (the
CMS options) and ``nested``. Unknown keys fail with a did-you-mean, wrong types fail naming the
key and the type expected, and a dataclass's own ``__post_init__`` check is re-raised as
:class:`ConfigError` (a ``ValueError``), so callers catch one error type.

Two message styles, both naming the key and the fix:

* a run-config key (``what=None``): ``unknown config key optim.lrr; did you mean optim.lr?``
* an option group (``what="model.mixer options"``, ``owner="hope"``):
  ``unknown model.mixer options ['chunk'] for hope; did you mean model.mixer.chunk_size? known:
  ...``
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["ConfigError", "check_keys", "from_dict", "options_or_keywords"]


class ConfigError(ValueError):
    """A config key, value or file is invalid; the message names it and the fix."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` against the annotation ``tp`` (a small, strict subset)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(
            f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}"
        )
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (a,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, a, key) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    return value


def check_keys(
    data: Iterable[str],
    known: Iterable[str],
    *,
    what: str | None = None,
    prefix: str = "",
    owner: str = "",
) -> None:
    """Refuse any key of ``data`` not in ``known``, suggesting the closest known key.

    Args:
        data: the keys given (a mapping's keys).
        known: the accepted keys (e.g. a dataclass's field names).
        what: the option group for the message (``"model.mixer options"``); ``None`` gives the
            run-config style ``unknown config key PREFIX.KEY`` (first unknown key only).
        prefix: the dotted path of the group (``"model.mixer."``), put before suggested keys.
        owner: who the options belong to (``"hope"``): ``... for hope``.
    Raises:
        ConfigError: naming the unknown key(s) and the closest known one or the known list.
    """
    names = list(known)
    bad = [k for k in data if k not in names]
    if not bad:
        return
    close = difflib.get_close_matches(str(bad[0]), names, n=1)
    if what is None:
        hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(names)}"
        raise ConfigError(f"unknown config key {prefix}{bad[0]}{hint}")
    where = f" for {owner}" if owner else ""
    hint = f"; did you mean {prefix}{close[0]}?" if close else ";"
    raise ConfigError(
        f"unknown {what} {sorted(bad)}{where}{hint} known: {', '.join(sorted(names))}"
    )


def from_dict(
    cls: type,
    data: Mapping[str, Any],
    prefix: str = "",
    *,
    what: str | None = None,
    owner: str = "",
    skip: Iterable[str] = (),
) -> Any:
    """Build dataclass ``cls`` from a mapping, strictly: unknown keys and bad types fail.

    Args:
        cls: the dataclass.
        data: its fields as plain data (YAML types: lists for tuples, ints for floats).
        prefix: dotted path of ``data`` in the whole config, used in messages (``"optim."``).
        what, owner: message style of unknown keys (see :func:`check_keys`). With ``what``
            given, a ``ValueError`` from ``cls`` itself is re-raised naming the group
            (``model.mixer: max_lr must be > 0, ...``) unless its message already does.
        skip: fields that ``data`` may not set (e.g. another family's options).
    Raises:
        ConfigError: an unknown key, a value of the wrong type, or ``cls``'s own check.
    """
    hints = typing.get_type_hints(cls)
    skipped = set(skip)
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in skipped]
    check_keys(data, names, what=what, prefix=prefix, owner=owner)
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        msg = str(e)
        group = prefix.rstrip(".")
        if what is not None and group and group not in msg:
            msg = f"{group}: {msg}"
        raise ConfigError(msg) from e


def options_or_keywords(cls: type[T], options: T | None, kwargs: Mapping[str, Any]) -> T:
    """A layer's options, given whole (``options``) or as keywords (``cls(**kwargs)``), not both.

    The layers take ``Layer(dim, n_heads, options)`` or ``Layer(dim, n_heads, chunk_size=16)``;
    this is that rule, written once. Raises ``TypeError`` when both are given.
    """
    if options is None:
        return cls(**kwargs)
    if kwargs:
        raise TypeError(f"give options or keywords {sorted(kwargs)}, not both")
    return options
