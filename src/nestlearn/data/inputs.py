"""Inputs of ``nestlearn prepare``: kept as an import path only.

Finding, checking and streaming every input format (text, JSONL plain / ``.gz`` / ``.zst``,
parquet, ``datasets`` folders, dataset repositories) lives in :mod:`nestlearn.data.readers`;
every input is checked before any token is written (a NUL byte, invalid UTF-8, an empty file, a
malformed JSONL line or a missing column is refused with a ``ValueError`` that names the file,
the line or row, and the fix).
"""

from __future__ import annotations

from nestlearn.data.readers import (  # noqa: F401 - re-exported
    JSONL_SUFFIXES,
    TEXT_SUFFIXES,
    Source,
    collect_sources,
)

__all__ = ["JSONL_SUFFIXES", "TEXT_SUFFIXES", "Source", "collect_sources"]
