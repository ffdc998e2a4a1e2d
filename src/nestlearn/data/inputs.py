"""Inputs of ``nestlearn prepare``: text files, folders and JSONL files, checked before any token
is written (a NUL byte, invalid UTF-8, an empty file or a malformed JSONL line is refused with a
``ValueError`` that names the file and the fix)."""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl",)
_READ_BLOCK = 8 << 20


@dataclass
class Source:
    """One input: a text file, a JSONL file, or an in-memory text (the default corpus).

    Attributes:
        path: recorded in ``metadata.json`` (absolute for files).
        kind: ``text`` (the whole file is one document) or ``jsonl``.
        sha256, n_bytes: of the file's bytes (of the UTF-8 text for in-memory sources).
        text: the document itself for in-memory sources, else ``None`` (read from ``path``).
    """

    path: str
    kind: str
    sha256: str
    n_bytes: int
    text: str | None = None

    def documents(self, text_key: str) -> Iterator[str]:
        """The documents of this source, in order (empty ones included, as ``""``)."""
        if self.text is not None:
            yield self.text
        elif self.kind == "text":
            yield Path(self.path).read_bytes().decode("utf-8")  # bytes: keep \r\n as they are
        else:
            with open(self.path, "rb") as f:
                for lineno, line in enumerate(f, start=1):
                    if line.strip():
                        yield _jsonl_text(json.loads(line), text_key, self.path, lineno)
                    else:
                        yield ""

    def fingerprint(self) -> list[Any]:
        return [self.kind, self.sha256, self.n_bytes]


def _jsonl_text(obj: Any, text_key: str, path: str, lineno: int) -> str:
    if not isinstance(obj, dict) or text_key not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"{path}:{lineno}: no {text_key!r} field (found {keys}); "
            "pass --text-key NAME with the field that holds the document text"
        )
    text = obj[text_key]
    if not isinstance(text, str):
        raise ValueError(
            f"{path}:{lineno}: field {text_key!r} is {type(text).__name__}, not a string"
        )
    return text


def _scan_text_file(path: Path) -> tuple[str, int]:
    """sha256 and size of a text file after checking it is non-empty, NUL-free UTF-8."""
    h = hashlib.sha256()
    dec = codecs.getincrementaldecoder("utf-8")()
    offset, nonblank = 0, False
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            h.update(block)
            nul = block.find(b"\0")
            if nul >= 0:
                raise ValueError(
                    f"{path}: byte {offset + nul} is NUL (0x00), so this looks like a binary file, "
                    "not text; remove it from the inputs"
                )
            pending = len(dec.getstate()[0])
            try:
                dec.decode(block)
            except UnicodeDecodeError as e:
                _raise_not_utf8(path, offset - pending + e.start, e.reason)
            nonblank = nonblank or bool(block.strip())
            offset += len(block)
    try:
        dec.decode(b"", final=True)
    except UnicodeDecodeError as e:
        _raise_not_utf8(path, offset - len(dec.getstate()[0]) + e.start, e.reason)
    if not nonblank:
        raise ValueError(f"{path} is empty (no text); remove it from the inputs")
    return h.hexdigest(), offset


def _raise_not_utf8(path: Path, offset: int, reason: str) -> None:
    raise ValueError(
        f"{path}: not valid UTF-8 at byte {offset} ({reason}); re-encode it, e.g. "
        f"`iconv -f latin1 -t utf-8 {path} > fixed.txt`, or remove it from the inputs"
    )


def _scan_jsonl_file(path: Path, text_key: str) -> tuple[str, int]:
    """sha256 and size of a JSONL file after checking every line (UTF-8, JSON, ``text_key``)."""
    h = hashlib.sha256()
    offset, n_docs = 0, 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            h.update(line)
            nul = line.find(b"\0")
            if nul >= 0:
                raise ValueError(
                    f"{path}: byte {offset + nul} (line {lineno}) is NUL (0x00), so this looks "
                    "like a binary file, not JSONL; remove it from the inputs"
                )
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError as e:
                _raise_not_utf8(path, offset + e.start, e.reason)
            if decoded.strip():
                try:
                    obj = json.loads(decoded)
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON "
                        'object such as {"text": "..."}'
                    ) from None
                n_docs += bool(_jsonl_text(obj, text_key, str(path), lineno))
            offset += len(line)
    if n_docs == 0:
        raise ValueError(
            f"{path} holds no non-empty {text_key!r} documents; remove it from the inputs "
            "or pass --text-key with the right field"
        )
    return h.hexdigest(), offset


def collect_sources(inputs: Sequence[str | Path], text_key: str = "text") -> list[Source]:
    """Expand folders, check every file, and return the inputs as :class:`Source` objects.

    Raises:
        ValueError: no inputs, a folder with no text files, an empty, binary or non-UTF-8 file,
            or a malformed JSONL line (the message names the file and the fix).
        FileNotFoundError: an input does not exist.
    """
    if not inputs:
        raise ValueError("no inputs given; pass text files, JSONL files or folders")
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(
                q
                for q in p.rglob("*")
                if q.is_file() and q.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES
            )
            if not found:
                raise ValueError(
                    f"folder {p} holds no *.txt, *.md or *.jsonl files; point at the files directly"
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist")
    sources: list[Source] = []
    seen: set[Path] = set()
    for f in files:
        resolved = f.resolve()
        if resolved in seen:
            logger.warning("input %s is listed twice; using it once", f)
            continue
        seen.add(resolved)
        if f.suffix.lower() in JSONL_SUFFIXES:
            sha, size = _scan_jsonl_file(f, text_key)
            sources.append(Source(str(resolved), "jsonl", sha, size))
        else:
            sha, size = _scan_text_file(f)
            sources.append(Source(str(resolved), "text", sha, size))
    return sources
