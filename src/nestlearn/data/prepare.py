"""Tokenize text into memmap token shards: ``nestlearn prepare INPUT... --out DIR --tokenizer NAME``.

Inputs are text files (one document each), folders (searched recursively for ``*.txt``, ``*.md``
and ``*.jsonl``, in sorted order) and JSONL files (one document per line under ``text_key``;
blank lines and empty texts are skipped and counted). Every input is checked before any token is
written: a NUL byte (binary file), invalid UTF-8, an empty file or a malformed JSONL line is
refused with a ``ValueError`` that names the file and the fix.

Output folder::

    shard_00000.bin ...   raw little-endian token ids, ``dtype`` uint16 (vocab <= 65536) or uint32,
                          ``shard_tokens`` ids each except the last; documents run across shards
    metadata.json         written last and atomically: its presence means the folder is complete
    progress.json         only while unfinished: where to resume

Each document's ids are followed by the tokenizer's ``eos_id`` (so ``n_tokens`` = text tokens +
``n_documents``). ``n_bytes`` counts the UTF-8 bytes of the document texts (for bits per byte).

Resuming: after each completed shard, ``progress.json`` records the shards written and the position
(input, document, token offset) the next shard starts at. Re-running the same command after an
interruption skips finished inputs, never rewrites completed shards and produces byte-identical
shards and ``metadata.json`` to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nestlearn.data.tokenizers import Tokenizer, get_tokenizer

logger = logging.getLogger(__name__)

FORMAT = "nestlearn-token-shards"
FORMAT_VERSION = 1
DEFAULT_SHARD_TOKENS = 1 << 26  # 64 Mi tokens: 128 MiB per uint16 shard
TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl",)
_BATCH_BYTES = 4 << 20  # encode documents in batches of about this much text
_READ_BLOCK = 8 << 20


# ----------------------------------------------------------------------------- atomic files


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync and rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """``atomic_write_bytes`` of ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


def _write_shard(path: Path, ids: np.ndarray) -> None:
    """One shard file (a separate function so tests can interrupt a run here)."""
    atomic_write_bytes(path, memoryview(np.ascontiguousarray(ids)).cast("B"))


# ----------------------------------------------------------------------------- sources


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


# ----------------------------------------------------------------------------- writing shards


class _ShardWriter:
    """Fills fixed-size shards with document ids and checkpoints after each completed shard."""

    def __init__(self, out: Path, tok: Tokenizer, shard_tokens: int, state: dict[str, Any]) -> None:
        self.out, self.shard_tokens = out, shard_tokens
        self.dtype = tok.token_dtype.newbyteorder("<")
        self.buf = np.empty(shard_tokens, dtype=self.dtype)
        self.fill = 0
        self.state = state  # shards, next, stats: exactly what progress.json holds

    def add_document(self, ids: np.ndarray, pos: tuple[int, int], n_bytes: int, skip: int) -> None:
        """Append one document's ids (eos included), dropping the first ``skip`` (on resume)."""
        before = self.state["stats"]
        after = dict(before)
        after["n_documents"] += 1
        after["n_bytes"] += n_bytes
        after["source_documents"] = list(before["source_documents"])
        after["source_documents"][pos[0]] += 1
        offset = skip
        while offset < len(ids):
            take = min(len(ids) - offset, self.shard_tokens - self.fill)
            self.buf[self.fill : self.fill + take] = ids[offset : offset + take]
            self.fill += take
            offset += take
            if self.fill == self.shard_tokens:
                if offset == len(ids):  # the document ends exactly at the shard boundary
                    self._flush([pos[0], pos[1] + 1, 0], after)
                else:
                    self._flush([pos[0], pos[1], offset], before)
        self.state["stats"] = after

    def skip_empty(self) -> None:
        self.state["stats"]["n_skipped_empty"] += 1

    def _flush(self, next_pos: list[int], stats: dict[str, Any]) -> None:
        ids = self.buf[: self.fill]
        name = f"shard_{len(self.state['shards']):05d}.bin"
        _write_shard(self.out / name, ids)
        sha = hashlib.sha256(memoryview(ids).cast("B")).hexdigest()
        self.state["shards"].append({"file": name, "n_tokens": int(self.fill), "sha256": sha})
        self.state["next"] = next_pos
        self.state["stats"] = stats
        atomic_write_json(self.out / "progress.json", self.state)
        self.fill = 0

    def finish(self, end: list[int]) -> None:
        """Write the last, partly filled shard; ``end`` is the position past the last input."""
        if self.fill:  # resuming after this point must add nothing more: next = end
            self._flush(end, self.state["stats"])


def _fingerprint(tok: Tokenizer, shard_tokens: int, text_key: str, sources: list[Source]) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": tok.describe(),
        "shard_tokens": shard_tokens,
        "text_key": text_key,
        "sources": [s.fingerprint() for s in sources],
    }


def _fresh_state(fingerprint: dict, n_sources: int) -> dict[str, Any]:
    stats = {
        "n_documents": 0,
        "n_bytes": 0,
        "n_skipped_empty": 0,
        "source_documents": [0] * n_sources,
    }
    return {"fingerprint": fingerprint, "shards": [], "next": [0, 0, 0], "stats": stats}


def prepare_sources(
    sources: list[Source],
    out_dir: str | Path,
    tokenizer: Tokenizer,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    text_key: str = "text",
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Tokenize checked ``sources`` into ``out_dir`` (see the module docstring); resumable.

    Returns:
        The metadata written to ``out_dir/metadata.json``.
    """
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    if not sources:
        raise ValueError("no inputs given; pass text files, JSONL files or folders")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(tokenizer, shard_tokens, text_key, sources)
    meta_path, prog_path = out / "metadata.json", out / "progress.json"

    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("fingerprint") == fp and not overwrite:
            logger.info("%s is already prepared from these inputs; nothing to do", out)
            return meta
        if not overwrite:
            raise ValueError(
                f"{out} already holds prepared data from other inputs or settings; "
                "choose another output folder or pass overwrite=True (--overwrite)"
            )
        meta_path.unlink()
    state = None
    if prog_path.exists() and not overwrite:
        saved = json.loads(prog_path.read_text(encoding="utf-8"))
        if saved.get("fingerprint") != fp:
            raise ValueError(
                f"{out} holds an unfinished run with other inputs or settings; re-run that "
                "command to finish it, choose another output folder, or pass overwrite=True"
            )
        state = saved
        logger.info(
            "resuming %s: %d shards done, continuing at input %d document %d",
            out,
            len(state["shards"]),
            state["next"][0],
            state["next"][1],
        )
    if state is None:
        prog_path.unlink(missing_ok=True)
        state = _fresh_state(fp, len(sources))

    writer = _ShardWriter(out, tokenizer, shard_tokens, state)
    start_src, start_doc, start_skip = state["next"]
    total = sum(s.n_bytes for s in sources)
    done = sum(s.n_bytes for s in sources[:start_src])
    t0 = time.perf_counter()
    bar = _progress_bar(total, done, progress, out)
    try:
        batch: list[tuple[tuple[int, int], str]] = []
        batch_bytes = 0

        def flush_batch() -> None:
            # Empty documents stay in the batch so the counters advance in document order.
            arrays = iter(tokenizer.encode_arrays([t for _, t in batch if t], dtype=writer.dtype))
            eos = np.array([tokenizer.eos_id], dtype=writer.dtype)
            for (si, di), text in batch:
                if not text:
                    writer.skip_empty()
                    continue
                ids = np.concatenate([next(arrays), eos])
                skip = start_skip if (si, di) == (start_src, start_doc) else 0
                writer.add_document(ids, (si, di), len(text.encode("utf-8")), skip)

        for si in range(start_src, len(sources)):
            read = 0  # characters read from this input: <= its bytes, so the bar never goes back
            for di, text in enumerate(sources[si].documents(text_key)):
                if si == start_src and di < start_doc:
                    continue
                batch.append(((si, di), text))
                batch_bytes += len(text)
                read += len(text)
                if batch_bytes >= _BATCH_BYTES:
                    flush_batch()
                    batch, batch_bytes = [], 0
                    if bar is not None:  # approximate inside an input ...
                        bar.update(done + min(read, sources[si].n_bytes) - bar.n)
            done += sources[si].n_bytes
            if bar is not None:  # ... exact at its end
                bar.update(done - bar.n)
        flush_batch()
        writer.finish([len(sources), 0, 0])
    finally:
        if bar is not None:
            bar.close()

    stats = state["stats"]
    if stats["n_documents"] == 0:
        raise ValueError("the inputs hold no non-empty documents; nothing to prepare")
    n_shards = len(state["shards"])
    for stale in out.glob("shard_*.bin"):  # leftovers of an earlier, larger run
        if stale.name >= f"shard_{n_shards:05d}.bin":
            stale.unlink()
    for tmp in out.glob(".shard_*.bin.tmp-*"):  # shards cut off mid-write by an interruption
        tmp.unlink(missing_ok=True)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer.describe(),
        "dtype": writer.dtype.name,
        "shard_tokens": shard_tokens,
        "shards": state["shards"],
        "n_tokens": sum(s["n_tokens"] for s in state["shards"]),
        "n_documents": stats["n_documents"],
        "n_bytes": stats["n_bytes"],
        "n_skipped_empty": stats["n_skipped_empty"],
        "eos_after_each_document": True,
        "text_key": text_key,
        "sources": [
            {
                "path": s.path,
                "kind": s.kind,
                "sha256": s.sha256,
                "n_bytes": s.n_bytes,
                "n_documents": n,
            }
            for s, n in zip(sources, stats["source_documents"])
        ],
        "fingerprint": fp,
    }
    atomic_write_json(meta_path, meta)
    prog_path.unlink(missing_ok=True)
    logger.info(
        "prepared %s: %d documents, %d tokens in %d shards (%.1fs)",
        out,
        meta["n_documents"],
        meta["n_tokens"],
        n_shards,
        time.perf_counter() - t0,
    )
    return meta


def _progress_bar(total: int, initial: int, enabled: bool, out: Path) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=f"prepare {out.name}")


def prepare(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    tokenizer_name: str,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    text_key: str = "text",
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Tokenize ``inputs`` (text files, folders, JSONL) into memmap shards in ``out_dir``.

    Args:
        inputs: files and folders; folders are searched recursively for *.txt, *.md, *.jsonl.
        out_dir: output folder (created); re-running after an interruption resumes.
        tokenizer_name: ``byte``, ``bpe-8192`` or ``hf:PATH`` (see :func:`get_tokenizer`).
        shard_tokens: ids per shard file (the last shard may be shorter).
        text_key: the JSONL field holding each document's text.
        progress: show a tqdm bar (bytes of input).
        overwrite: replace an existing prepared folder built from other inputs.

    Returns:
        The metadata written to ``out_dir/metadata.json``: tokenizer (name, sha256, vocab_size,
        ids), dtype, shards (file, n_tokens, sha256), n_documents, n_bytes, n_tokens, sources.

    Raises:
        ValueError: empty, binary or non-UTF-8 input, bad JSONL, or an ``out_dir`` that holds a
            different preparation (the message names the file and the fix).
    """
    tokenizer = get_tokenizer(tokenizer_name)
    sources = collect_sources(inputs, text_key)
    return prepare_sources(
        sources,
        out_dir,
        tokenizer,
        shard_tokens=shard_tokens,
        text_key=text_key,
        progress=progress,
        overwrite=overwrite,
    )


# ----------------------------------------------------------------------------- CLI hooks


def add_prepare_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``nestlearn prepare`` arguments to ``parser`` (a subcommand parser)."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="text/JSONL files or folders")
    parser.add_argument("--out", required=True, help="output folder for shards + metadata.json")
    parser.add_argument(
        "--tokenizer", default="byte", help="byte, bpe-8192 or hf:PATH (default: byte)"
    )
    parser.add_argument(
        "--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="token ids per shard file"
    )
    parser.add_argument("--text-key", default="text", help="JSONL field with the document text")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing preparation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_prepare(args: argparse.Namespace) -> int:
    """Run :func:`prepare` from parsed ``args`` and print a short summary; returns an exit code."""
    t0 = time.perf_counter()
    meta = prepare(
        args.inputs,
        args.out,
        args.tokenizer,
        shard_tokens=args.shard_tokens,
        text_key=args.text_key,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    tok = meta["tokenizer"]
    print(
        f"prepared {args.out}: {meta['n_documents']:,d} documents from {len(meta['sources'])} "
        f"files, {meta['n_bytes']:,d} bytes -> {meta['n_tokens']:,d} {tok['name']} tokens "
        f"({meta['n_bytes'] / meta['n_tokens']:.2f} bytes/token, vocab {tok['vocab_size']}, "
        f"{meta['dtype']}) in {len(meta['shards'])} shards, {time.perf_counter() - t0:.1f}s"
    )
    return 0
