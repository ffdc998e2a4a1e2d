"""Files that are never half-written, and their sha256: written once for every package.

:func:`atomic_write_bytes` / :func:`atomic_write_text` write through a temporary file next to the
target (``.<name>.tmp-<pid>``, the pattern the run-folder and prepare clean-ups look for), fsync
it and rename it over the target, so a reader sees the old file or the new one and never a torn
write; the temporary file is removed when the write fails. :func:`fsync_dir` makes a rename
durable; :func:`sha256_file` streams a file's digest.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "fsync_file",
    "fsync_tree",
    "sha256_file",
    "temp_path",
]


def temp_path(path: Path) -> Path:
    """The temporary name :func:`atomic_write_bytes` writes ``path`` under first."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync and rename: never a half-written file."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself survives a power cut


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be
    opened (Windows) or synced."""
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


def fsync_tree(folder: str | Path) -> None:
    """:func:`fsync_file` every file directly in ``folder``, then :func:`fsync_dir` it."""
    for f in Path(folder).iterdir():
        if f.is_file():
            fsync_file(f)
    fsync_dir(folder)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
