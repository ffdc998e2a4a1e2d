"""Reading prepared tokens: :class:`TokenShards` and the cached :func:`default_corpus`.

A prepared folder (see :mod:`nestlearn.data.prepare`) is one long stream of token ids split over
shard files; documents are separated by ``eos_id``. :class:`TokenShards` memory-maps the shards
and reads any window ``[start, start + length)`` of the stream, across shard boundaries.

:func:`default_corpus` prepares a split of the embedded corpus on first use into a cache folder
(``$NESTLEARN_CACHE`` or ``~/.cache/nestlearn``) keyed by the manifest's sha256 and the
tokenizer's sha256. It is safe when several processes (e.g. torchrun ranks) ask at once: one
prepares under a lock while the others wait, and the result appears by an atomic rename of a
temporary folder, so no process ever reads a half-written split.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nestlearn.data.corpus import (
    corpus_documents,
    manifest_sha256,
    normalize_split,
    split_documents,
)
from nestlearn.data.prepare import FORMAT, Source, prepare_sources
from nestlearn.data.tokenizers import get_tokenizer

logger = logging.getLogger(__name__)


class TokenShards:
    """Memory-mapped, read-only view of a prepared folder as one stream of token ids.

    Attributes:
        path: the folder.
        metadata: the parsed ``metadata.json``.
        dtype: numpy dtype of the ids on disk (uint16 or uint32).
        n_bytes: UTF-8 bytes of the text the tokens came from (bits per byte = nats summed over
            all tokens / (n_bytes * ln 2)).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "metadata.json"
        if not meta_path.is_file():
            hint = (
                "its preparation was interrupted; run the same prepare command again to finish it"
                if (self.path / "progress.json").exists()
                else "prepare it first: nestlearn prepare INPUT... --out DIR --tokenizer NAME"
            )
            raise FileNotFoundError(f"{self.path} has no metadata.json: {hint}")
        self.metadata: dict[str, Any] = _read_metadata(meta_path)
        self.dtype = np.dtype(self.metadata["dtype"]).newbyteorder("<")
        self._shards: list[np.ndarray] = []
        for shard in self.metadata["shards"]:
            file = self.path / shard["file"]
            expected = shard["n_tokens"] * self.dtype.itemsize
            size = file.stat().st_size if file.is_file() else -1
            if size != expected:
                raise ValueError(
                    f"{file} has {size} bytes, metadata.json expects {expected}; the folder is "
                    "damaged: prepare it again with --overwrite"
                )
            self._shards.append(np.memmap(file, dtype=self.dtype, mode="r"))
        lengths = np.array([len(s) for s in self._shards], dtype=np.int64)
        # _starts[i] is the stream offset of shard i; _starts[-1] the total.
        self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def __len__(self) -> int:
        """Total number of token ids (eos separators included)."""
        return int(self._starts[-1])

    @property
    def n_bytes(self) -> int:
        """UTF-8 bytes of the source text."""
        return int(self.metadata["n_bytes"])

    @property
    def n_documents(self) -> int:
        """Number of documents (= number of eos ids in the stream)."""
        return int(self.metadata["n_documents"])

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size; every id is below it."""
        return int(self.metadata["tokenizer"]["vocab_size"])

    @property
    def eos_id(self) -> int:
        """The id that ends every document."""
        return int(self.metadata["tokenizer"]["eos_id"])

    @property
    def tokenizer_name(self) -> str:
        """Name to give :func:`~nestlearn.data.tokenizers.get_tokenizer` for decoding."""
        return str(self.metadata["tokenizer"]["name"])

    def get(self, start: int, length: int) -> np.ndarray:
        """Ids ``[start, start + length)`` of the stream as a new array ``[length]``.

        Windows may span shard boundaries. Raises ``IndexError`` outside ``[0, len(self)]``.
        """
        start, length = int(start), int(length)
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(
                f"window [{start}, {start + length}) is outside the {len(self)} tokens of {self.path}"
            )
        out = np.empty(length, dtype=self.dtype)
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        pos, done = start, 0
        while done < length:
            lo = pos - int(self._starts[i])
            take = min(length - done, len(self._shards[i]) - lo)
            out[done : done + take] = self._shards[i][lo : lo + take]
            done += take
            pos += take
            i += 1
        return out

    def get_batch(self, starts: np.ndarray | list[int], length: int) -> np.ndarray:
        """Windows of ``length`` ids at each of ``starts``: array ``[len(starts), length]``."""
        return (
            np.stack([self.get(s, length) for s in starts])
            if len(starts)
            else np.empty((0, length), dtype=self.dtype)
        )

    def __repr__(self) -> str:
        return (
            f"TokenShards({str(self.path)!r}, tokens={len(self)}, documents={self.n_documents}, "
            f"tokenizer={self.tokenizer_name!r})"
        )


_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _read_metadata(meta_path: Path) -> dict[str, Any]:
    """Parse and check a prepared folder's ``metadata.json``; every problem is a ``ValueError``
    naming the file. Shard names must be plain file names inside the folder."""
    damaged = f"; the folder is damaged: prepare it again (nestlearn prepare ... --out {meta_path.parent} --overwrite)"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{meta_path} is unreadable ({e}){damaged}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a nestlearn token-shard folder")
    try:
        dtype = np.dtype(meta.get("dtype"))
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind != "u" or dtype.itemsize not in (1, 2, 4):
        raise ValueError(f"{meta_path}: dtype {meta.get('dtype')!r} is not uint8/16/32{damaged}")
    shards = meta.get("shards")
    if not isinstance(shards, list) or not shards:
        raise ValueError(f"{meta_path} lists no shards{damaged}")
    for shard in shards:
        name = shard.get("file") if isinstance(shard, dict) else None
        n = shard.get("n_tokens") if isinstance(shard, dict) else None
        if not isinstance(name, str) or not _SHARD_NAME.match(name):
            raise ValueError(
                f"{meta_path} names shard {str(name)[:80]!r}; a shard must be a file name inside "
                f"the folder (no path){damaged}"
            )
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{meta_path}: shard {name} has n_tokens {n!r}{damaged}")
    tok = meta.get("tokenizer")
    if not isinstance(tok, dict) or not isinstance(tok.get("name"), str):
        raise ValueError(f"{meta_path} does not name its tokenizer{damaged}")
    for key in ("n_bytes", "n_documents"):
        if isinstance(meta.get(key), bool) or not isinstance(meta.get(key), int):
            raise ValueError(f"{meta_path}: {key} is {meta.get(key)!r}, not an integer{damaged}")
    return meta


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$NESTLEARN_CACHE``, else ``~/.cache/nestlearn``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("NESTLEARN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nestlearn"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """An inter-process lock on ``path`` (``filelock``, which torch depends on), if available.

    Yields whether the lock is held; without ``filelock`` correctness rests on the atomic rename.
    """
    try:
        from filelock import FileLock
    except ImportError:  # pragma: no cover - torch installs filelock
        yield False
        return
    with FileLock(str(path)):
        yield True


def default_corpus(
    tokenizer_name: str,
    split: str,
    cache_dir: str | Path | None = None,
    *,
    progress: bool = False,
) -> TokenShards:
    """The embedded corpus split ``split`` tokenized with ``tokenizer_name``, prepared on first use.

    Args:
        tokenizer_name: ``byte``, ``bpe-8192`` or ``hf:PATH``.
        split: ``train``, ``validation`` (alias ``val``) or ``test``.
        cache_dir: where prepared splits live (default ``$NESTLEARN_CACHE`` or
            ``~/.cache/nestlearn``); the folder is
            ``corpus/nl-corpus-<manifest sha>/<tokenizer>-<tokenizer sha>/<split>``.
        progress: show a tqdm bar while preparing.

    Each document of the split is one document of the stream (followed by eos), in manifest
    order. The archive and every document are checked against the manifest's sha256.
    """
    split = normalize_split(split)
    if split == "all":
        raise ValueError("default_corpus needs one split: train, validation or test")
    tok = get_tokenizer(tokenizer_name)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", tok.name)[-40:]
    parent = (
        cache_root(cache_dir)
        / "corpus"
        / f"nl-corpus-{manifest_sha256()[:16]}"
        / f"{slug}-{tok.sha256[:16]}"
    )
    final = parent / split
    if (final / "metadata.json").is_file():
        return TokenShards(final)
    parent.mkdir(parents=True, exist_ok=True)
    with _lock(parent / f".{split}.lock") as locked:
        if (final / "metadata.json").is_file():  # another process finished while we waited
            return TokenShards(final)
        if locked:  # we alone prepare this split now: temp folders left by crashes can go
            for old in parent.glob(f".{split}.tmp-*"):
                shutil.rmtree(old, ignore_errors=True)
        tmp = parent / f".{split}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        logger.info(
            "preparing the %s split of the default corpus with %s in %s", split, tok.name, final
        )
        sources = [
            Source(f"nl-corpus/{path}", "text", doc_sha, n_bytes, text)
            for path, text, doc_sha, n_bytes in _split_sources(split)
        ]
        try:
            prepare_sources(sources, tmp, tok, progress=progress)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "metadata.json").is_file():
                    raise
                logger.info("another process prepared %s first; using its copy", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return TokenShards(final)


def _split_sources(split: str) -> Iterator[tuple[str, str, str, int]]:
    """(path, text, sha256, n_bytes) of each document of ``split`` (verified by corpus_documents)."""
    entries = {d["path"]: d for d in split_documents(split)}
    for path, text in corpus_documents(split):
        yield path, text, entries[path]["sha256"], entries[path]["bytes"]
