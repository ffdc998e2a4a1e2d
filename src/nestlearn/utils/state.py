"""Recurrent-state helpers shared by the layers' state tuples."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["detach_fields"]


def detach_fields(state: Iterable[Any]) -> list[Any]:
    """``state``'s fields detached, ``None`` kept: the body of a state tuple's ``detach``, as
    ``MyState(*detach_fields(self))``. A field is ``None`` or anything with a ``detach()``."""
    return [None if x is None else x.detach() for x in state]
