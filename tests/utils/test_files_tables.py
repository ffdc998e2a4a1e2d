"""``nestlearn.utils``: atomic files, sha256 and tables, each written once."""

from __future__ import annotations

import hashlib

import pytest

from nestlearn.utils.files import atomic_write_bytes, atomic_write_text, sha256_file, temp_path
from nestlearn.utils.tables import format_table, markdown_table


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_text(path, "old")
    atomic_write_bytes(path, b"new \xe2\x9c\x93")
    assert path.read_text(encoding="utf-8") == "new \u2713"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, object())  # type: ignore[arg-type]  # fails inside the write
    assert path.read_text() == "old" and not temp_path(path).exists()


def test_sha256_file_is_hashlibs(tmp_path):
    data = bytes(range(256)) * 5000  # more than one 1 MiB read
    (tmp_path / "b").write_bytes(data)
    assert sha256_file(tmp_path / "b") == hashlib.sha256(data).hexdigest()


def test_tables():
    assert markdown_table(["model", "ppl"], [["a", "1.5"]]) == (
        "| model | ppl |\n|---|--:|\n| a | 1.5 |"
    )
    assert format_table(["m", "n"], [["x", 12345]]).splitlines() == [
        "m       n",
        "-  ------",
        "x  12,345",
    ]
