"""The C heap policy the trainer sets on CPU runs (``nestlearn.train.heap``)."""

from __future__ import annotations

import sys

import pytest

from nestlearn.train.config import resolve_config
from nestlearn.train.heap import set_mmap_threshold


def test_off_and_unsupported_leave_the_default() -> None:
    assert set_mmap_threshold(0) is False
    assert set_mmap_threshold(-5) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_sets_the_threshold_on_linux() -> None:
    assert set_mmap_threshold(1 << 20) is True


def test_config_field_is_validated() -> None:
    assert resolve_config("transformer-tiny").train.mmap_threshold_kb == 1024
    with pytest.raises(ValueError, match="mmap_threshold_kb"):
        resolve_config("transformer-tiny", None, ["train.mmap_threshold_kb=-1"])
