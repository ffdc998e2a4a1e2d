"""Input formats of ``nestlearn prepare``: finding, checking and streaming documents.

Kinds of input (one :class:`Source` each):

=========== ===================================== =============================================
kind        files                                 documents
=========== ===================================== =============================================
``text``    ``*.txt``, ``*.md``, any other name   the whole file is one document (bytes as-is)
``jsonl``   ``*.jsonl``, ``*.jsonl.gz``,          one JSON object per line, text under
            ``*.jsonl.zst``                       ``text_key``; blank lines count as empty
``parquet`` ``*.parquet``                         one row each, text in column ``text_key``
``arrow``   the ``*.arrow`` files of a Hugging    one row each, text in column ``text_key``
            Face ``datasets`` folder written by
            ``save_to_disk`` (read with pyarrow;
            the ``datasets`` package is not
            needed)
=========== ===================================== =============================================

Folders: a ``save_to_disk`` folder (``state.json``, or ``dataset_dict.json`` for several splits:
``split`` picks one) is read as its arrow files; any other folder is searched recursively. A
folder that holds parquet or compressed JSONL files is a dataset repository (for example a local
copy of a Hugging Face dataset repo): its data files are read, its text files (README, licence)
are not, and when file paths name more than one split (``train``, ``validation``, ``test``, ...)
only ``split``'s files are kept. Other folders give their ``*.txt``, ``*.md`` and ``*.jsonl``
files. Files are read in sorted path order.

Every input is checked before anything is written (:func:`collect_sources`): a NUL byte (binary
file), invalid UTF-8, an empty file, a malformed JSONL line, a missing text column or a file
with no non-empty document is refused with a ``ValueError`` naming the file, the line or row,
and the fix. Reading streams: memory stays flat whatever the size of an input.

Work is handed out in *payloads* (:meth:`Source.payloads`): raw lines, an Arrow string array or
a text, turned into strings by :func:`payload_texts` in whichever process tokenizes them, so the
reading process does little more than I/O.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
TABLE_SUFFIXES = (".parquet",)
PAYLOAD_BYTES = 1 << 20  # hand documents to the tokenizer in payloads of about this much text
_READ_BLOCK = 8 << 20
_SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
_SPLIT_RE = re.compile(r"(?:^|[/_.\-])(" + "|".join(_SPLIT_WORDS) + r")(?=$|[/_.\-])")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in JSONL_SUFFIXES + TABLE_SUFFIXES + (".arrow",):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def kind_of(path: Path) -> str:
    """``jsonl`` / ``parquet`` / ``arrow`` / ``text`` by the file name."""
    s = _suffix(path)
    if s in JSONL_SUFFIXES:
        return "jsonl"
    if s in TABLE_SUFFIXES:
        return "parquet"
    if s == ".arrow":
        return "arrow"
    return "text"


# ----------------------------------------------------------------------------- sources


@dataclass
class Source:
    """One input: a file, or an in-memory text (the default corpus).

    Attributes:
        path: recorded in ``metadata.json`` (absolute for files).
        kind: ``text``, ``jsonl``, ``parquet`` or ``arrow``.
        sha256, n_bytes: of the file's bytes (of the UTF-8 text for in-memory sources).
        text: the document itself for in-memory sources, else ``None`` (read from ``path``).
        text_bytes: UTF-8 bytes of all its document texts (the progress bar's unit).
    """

    path: str
    kind: str
    sha256: str
    n_bytes: int
    text: str | None = None
    text_bytes: int = 0

    def __post_init__(self) -> None:
        if not self.text_bytes:
            self.text_bytes = self.n_bytes

    def fingerprint(self) -> list[Any]:
        return [self.kind, self.sha256, self.n_bytes]

    def payloads(self, text_key: str, start: int = 0) -> Iterator[tuple[str, Any, int]]:
        """``(kind, payload, n_docs)`` from document ``start`` on, in order, empties included.

        ``payload_texts(kind, payload, text_key)`` turns a payload into its ``n_docs`` strings.
        """
        if self.text is not None or self.kind == "text":
            if start == 0:
                data = self.text if self.text is not None else Path(self.path).read_bytes()
                yield "text", data, 1
        elif self.kind == "jsonl":
            yield from _jsonl_payloads(Path(self.path), start)
        else:
            from nestlearn.data.tables import table_payloads

            yield from table_payloads(Path(self.path), self.kind, text_key, start)

    def documents(self, text_key: str) -> Iterator[str]:
        """The documents of this source, in order (empty ones included, as ``""``)."""
        for kind, payload, _ in self.payloads(text_key):
            yield from payload_texts(kind, payload, text_key, self.path)


def payload_texts(kind: str, payload: Any, text_key: str, path: str = "?") -> list[str]:
    """The document strings of one payload (``""`` for blank lines, empty texts and nulls)."""
    if kind == "text":
        return [payload if isinstance(payload, str) else payload.decode("utf-8")]
    if kind == "jsonl":
        first, lines = payload
        return [
            _jsonl_text(json.loads(line), text_key, path, first + i) if line.strip() else ""
            for i, line in enumerate(lines)
        ]
    return [t or "" for t in payload.to_pylist()]  # an Arrow string array (nulls -> "")


# ----------------------------------------------------------------------------- JSONL


def _open_raw(path: Path) -> BinaryIO:
    """The decompressed bytes of a JSONL file (plain, gzip or zstandard), streamed."""
    s = _suffix(path)
    if s == ".jsonl.gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if s == ".jsonl.zst":
        try:
            import zstandard
        except ImportError:
            raise ValueError(
                f"{path}: reading .zst needs the zstandard package; "
                'pip install "nestlearn[data]" (or pip install zstandard)'
            ) from None
        raw = open(path, "rb")  # noqa: SIM115 - closed with the reader below
        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, closefd=True, read_across_frames=True
        )
        return io.BufferedReader(reader, buffer_size=1 << 20)  # type: ignore[arg-type]
    return open(path, "rb")


def _jsonl_payloads(path: Path, start: int) -> Iterator[tuple[str, Any, int]]:
    with _open_raw(path) as f:
        lines: list[bytes] = []
        size, first = 0, start
        for lineno, line in enumerate(f):
            if lineno < start:
                continue
            lines.append(line)
            size += len(line)
            if size >= PAYLOAD_BYTES:
                yield "jsonl", (first + 1, lines), len(lines)
                first += len(lines)
                lines, size = [], 0
        if lines:
            yield "jsonl", (first + 1, lines), len(lines)


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


class _HashingReader(io.RawIOBase):
    """A raw binary stream over a file that hashes and counts every byte read through it."""

    def __init__(self, f: BinaryIO) -> None:
        super().__init__()
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def readinto(self, buf: Any) -> int:
        n = self.f.readinto(buf)  # type: ignore[attr-defined]
        self.h.update(memoryview(buf)[:n])
        self.n += n
        return n

    def readable(self) -> bool:
        return True


def _scan_jsonl_file(path: Path, text_key: str) -> tuple[str, int, int]:
    """sha256 and size of the file and UTF-8 bytes of its texts, after checking every line."""
    raw = open(path, "rb")  # noqa: SIM115
    hashing = _HashingReader(raw)
    s = _suffix(path)
    try:
        if s == ".jsonl.gz":
            lines: Any = gzip.GzipFile(fileobj=hashing, mode="rb")  # type: ignore[arg-type]
        elif s == ".jsonl.zst":
            import zstandard

            lines = io.BufferedReader(
                zstandard.ZstdDecompressor().stream_reader(
                    hashing, closefd=False, read_across_frames=True
                ),  # type: ignore[arg-type]
                buffer_size=1 << 20,
            )
        else:
            lines = io.BufferedReader(hashing, buffer_size=1 << 20)  # type: ignore[arg-type]
        offset, n_docs, text_bytes = 0, 0, 0
        what = "JSONL" if s == ".jsonl" else f"decompressed {s}"
        try:
            for lineno, line in enumerate(lines, start=1):
                nul = line.find(b"\0")
                if nul >= 0:
                    raise ValueError(
                        f"{path}: byte {offset + nul} (line {lineno}) of the {what} is NUL (0x00), "
                        "so this looks like a binary file, not JSONL; remove it from the inputs"
                    )
                try:
                    decoded = line.decode("utf-8")
                except UnicodeDecodeError as e:
                    _raise_not_utf8(path, offset + e.start, e.reason, f" (line {lineno})")
                if decoded.strip():
                    try:
                        obj = json.loads(decoded)
                    except json.JSONDecodeError as e:
                        raise ValueError(
                            f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one "
                            'JSON object such as {"text": "..."}'
                        ) from None
                    text = _jsonl_text(obj, text_key, str(path), lineno)
                    if text:
                        n_docs += 1
                        text_bytes += len(text.encode("utf-8"))
                offset += len(line)
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
            raise ValueError(f"{path}: cannot decompress ({e}); is it a complete {s} file?") from e
        except Exception as e:
            if type(e).__module__.startswith("zstd"):
                raise ValueError(
                    f"{path}: cannot decompress ({e}); is it a complete .zst file?"
                ) from e
            raise
        while hashing.read(_READ_BLOCK):  # trailing bytes the decompressor did not need
            pass  # (RawIOBase.read goes through readinto, so they are hashed too)
    finally:
        raw.close()
    if n_docs == 0:
        raise ValueError(
            f"{path} holds no non-empty {text_key!r} documents; remove it from the inputs "
            "or pass --text-key with the right field"
        )
    return hashing.h.hexdigest(), hashing.n, text_bytes


# ----------------------------------------------------------------------------- text files


def _raise_not_utf8(path: Path, offset: int, reason: str, where: str = "") -> None:
    raise ValueError(
        f"{path}: not valid UTF-8 at byte {offset}{where} ({reason}); re-encode it, e.g. "
        f"`iconv -f latin1 -t utf-8 {path} > fixed.txt`, or remove it from the inputs"
    )


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


# ----------------------------------------------------------------------------- folders


def _saved_dataset_files(folder: Path, split: str) -> list[Path] | None:
    """The arrow files of a ``datasets`` ``save_to_disk`` folder, or ``None`` if it is not one."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        if split not in splits:
            raise ValueError(
                f"{folder} is a datasets folder with splits {splits}, not {split!r}; "
                f"pass --split with one of them"
            )
        return _saved_dataset_files(folder / split, split)
    state = folder / "state.json"
    if not state.is_file():
        return None
    files = json.loads(state.read_text(encoding="utf-8")).get("_data_files") or []
    paths = [folder / f["filename"] for f in files]
    if not paths:
        raise ValueError(f"{state} lists no data files; save the dataset again with save_to_disk")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p} (listed in {state}) is missing")
    return paths


def _split_of(rel: str) -> str | None:
    m = _SPLIT_RE.findall(rel.lower())
    return _SPLIT_WORDS[m[-1]] if m else None


def _folder_files(folder: Path, split: str) -> list[Path]:
    saved = _saved_dataset_files(folder, split)
    if saved is not None:
        return saved
    files = sorted(q for q in folder.rglob("*") if q.is_file() and not q.name.startswith("."))
    data = [q for q in files if _suffix(q) in TABLE_SUFFIXES + (".jsonl.gz", ".jsonl.zst")]
    if data:  # a dataset repository: its data files only
        data = sorted(data + [q for q in files if _suffix(q) == ".jsonl"])
        skipped = [q for q in files if _suffix(q) in TEXT_SUFFIXES]
        if skipped:
            logger.info(
                "%s holds data files; its %d text files (%s) are not read as documents",
                folder,
                len(skipped),
                ", ".join(q.name for q in skipped[:3]),
            )
        splits = {_split_of(str(q.relative_to(folder))) for q in data}
        if len(splits - {None}) > 1:
            want = _SPLIT_WORDS.get(split.lower(), split)
            keep = [q for q in data if _split_of(str(q.relative_to(folder))) == want]
            if not keep:
                raise ValueError(
                    f"{folder} holds files of splits {sorted(s for s in splits if s)}, none of "
                    f"{split!r}; pass --split with one of them"
                )
            logger.info("%s: reading the %d %s files", folder, len(keep), want)
            data = keep
        return data
    found = [q for q in files if _suffix(q) in TEXT_SUFFIXES + (".jsonl",)]
    if not found:
        raise ValueError(
            f"folder {folder} holds no *.txt, *.md, *.jsonl[.gz|.zst] or *.parquet files and is "
            "not a datasets save_to_disk folder; point at the files directly"
        )
    return found


def collect_sources(
    inputs: Sequence[str | Path], text_key: str = "text", split: str = "train"
) -> list[Source]:
    """Expand folders, check every file, and return the inputs as :class:`Source` objects.

    Raises:
        ValueError: no inputs, a folder with no input files, an empty, binary or non-UTF-8 file,
            a malformed JSONL line, a missing text column (the message names the file and fix).
        FileNotFoundError: an input does not exist.
    """
    if not inputs:
        raise ValueError("no inputs given; pass text, JSONL or parquet files, or folders")
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files.extend(_folder_files(p, split))
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
        kind = kind_of(f)
        if kind == "jsonl":
            sha, size, text_bytes = _scan_jsonl_file(f, text_key)
        elif kind in ("parquet", "arrow"):
            from nestlearn.data.tables import scan_table_file

            sha, size, text_bytes = scan_table_file(f, kind, text_key)
        else:
            if f.name.lower().endswith((".gz", ".zst", ".bz2", ".xz")):
                raise ValueError(
                    f"{f}: compressed files are read only as JSONL (*.jsonl.gz, *.jsonl.zst); "
                    "decompress it or convert it to JSONL"
                )
            sha, size = _scan_text_file(f)
            text_bytes = size
        sources.append(Source(str(resolved), kind, sha, size, text_bytes=text_bytes))
    return sources
