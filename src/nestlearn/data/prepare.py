"""Tokenize text into memmap token shards: ``nestlearn prepare INPUT... --out DIR --tokenizer NAME``.

Inputs (see :mod:`nestlearn.data.readers`): text files (one document each), JSONL files (plain,
``.gz`` or ``.zst``; one document per line under ``text_key``), parquet files and Hugging Face
``datasets`` folders (column ``text_key``), and folders of these. Every input is checked before
any token is written: a NUL byte (binary file), invalid UTF-8, an empty file, a malformed JSONL
line or a missing column is refused with a ``ValueError`` that names the file, the row and the fix.

Tokenization runs on ``workers`` processes (:mod:`nestlearn.data.encode`); the output does not
depend on their number.

Output folder::

    shard_00000.bin ...   raw little-endian token ids, ``dtype`` uint16 (vocab <= 65536) or uint32,
                          ``shard_tokens`` ids each except the last; documents run across shards
    metadata.json         written last and atomically: its presence means the folder is complete
    progress.json         only while unfinished: where to resume

Each document's ids are followed by the tokenizer's ``eos_id`` (so ``n_tokens`` = text tokens +
``n_documents``). ``n_bytes`` counts the UTF-8 bytes of the document texts (for bits per byte).

Resuming: after each completed shard, ``progress.json`` records the shards written and the position
(input, document, token offset) the next shard starts at. Re-running the same command after an
interruption (even a SIGKILL in the middle of a shard) skips finished inputs, never rewrites
completed shards and produces byte-identical shards and ``metadata.json`` to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nestlearn.data.encode import PayloadEncoder
from nestlearn.data.readers import (  # noqa: F401 - re-exported: the public names of prepare
    JSONL_SUFFIXES,
    TEXT_SUFFIXES,
    Source,
    collect_sources,
)
from nestlearn.data.tokenizers import Tokenizer, get_tokenizer
from nestlearn.utils.files import atomic_write_bytes, fsync_dir  # noqa: F401 - atomic_write_bytes re-exported

logger = logging.getLogger(__name__)

FORMAT = "nestlearn-token-shards"
FORMAT_VERSION = 1
DEFAULT_SHARD_TOKENS = 1 << 26  # 64 Mi tokens: 128 MiB per uint16 shard


# ----------------------------------------------------------------------------- atomic files


def atomic_write_json(path: Path, obj: Any) -> None:
    """``atomic_write_bytes`` of ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


def _write_shard(path: Path, ids: np.ndarray) -> None:
    """One shard file (a separate function so tests can interrupt a run here)."""
    atomic_write_bytes(path, memoryview(np.ascontiguousarray(ids)).cast("B"))


# ----------------------------------------------------------------------------- writing shards


class _ShardWriter:
    """Fills fixed-size shards with document ids and checkpoints after each completed shard."""

    def __init__(self, out: Path, tok: Tokenizer, shard_tokens: int, state: dict[str, Any]) -> None:
        self.out, self.shard_tokens = out, shard_tokens
        self.dtype = tok.token_dtype.newbyteorder("<")
        self.buf = np.empty(shard_tokens, dtype=self.dtype)
        self.fill = 0
        self.state = state  # shards, next, stats: exactly what progress.json holds

    def add_batch(
        self, src: int, first_doc: int, ids: np.ndarray, counts: np.ndarray, n_bytes: np.ndarray,
        skip: int = 0,
    ) -> None:  # fmt: skip
        """Append the ids of documents ``first_doc, first_doc + 1, ...`` of input ``src``.

        ``ids`` holds them back to back (eos after each), ``counts[j]`` the ids of document
        ``j`` (0: empty, skipped) and ``n_bytes[j]`` its UTF-8 bytes. The first ``skip`` ids
        are dropped (they were written before an interruption).
        """
        base = self.state["stats"]
        nonempty = counts > 0
        cum_docs = np.cumsum(nonempty)
        cum_bytes = np.cumsum(np.where(nonempty, n_bytes, 0))
        cum_empty = np.cumsum(~nonempty)
        ends = np.cumsum(counts) - skip  # where document j ends in ids[skip:]
        starts = ends - counts

        def through(j: int) -> dict[str, Any]:
            """The counters once documents ``0..j`` of this batch are done (``j = -1``: none)."""
            out = dict(base)
            out["source_documents"] = list(base["source_documents"])
            if j >= 0:
                out["n_documents"] += int(cum_docs[j])
                out["n_bytes"] += int(cum_bytes[j])
                out["n_skipped_empty"] += int(cum_empty[j])
                out["source_documents"][src] += int(cum_docs[j])
            return out

        ids = ids[skip:]
        pos = 0
        while pos < len(ids):
            take = min(len(ids) - pos, self.shard_tokens - self.fill)
            self.buf[self.fill : self.fill + take] = ids[pos : pos + take]
            self.fill += take
            pos += take
            if self.fill == self.shard_tokens:
                j = int(np.searchsorted(ends, pos, side="left"))  # the document holding pos - 1
                if ends[j] == pos:  # it ends exactly at the shard boundary
                    self._flush([src, first_doc + j + 1, 0], through(j))
                else:
                    self._flush([src, first_doc + j, int(pos - starts[j])], through(j - 1))
        self.state["stats"] = through(len(counts) - 1)

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


def _read_json(path: Path, fix: str) -> Any:
    """A JSON file of the output folder; unreadable ones are a ``ValueError`` naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is damaged ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is damaged (not a JSON object); {fix}")
    return data


def _valid_progress(state: dict[str, Any], n_sources: int) -> bool:
    def ints(xs: Any, n: int | None = None) -> bool:
        return (isinstance(xs, list) and (n is None or len(xs) == n)
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs))  # fmt: skip

    stats = state.get("stats")
    shards = state.get("shards")
    return (
        ints(state.get("next"), 3)
        and isinstance(shards, list)
        and all(isinstance(x, dict) and isinstance(x.get("file"), str) for x in shards)
        and isinstance(stats, dict)
        and ints([stats.get(k) for k in ("n_documents", "n_bytes", "n_skipped_empty")])
        and ints(stats.get("source_documents"), n_sources)
    )


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
    workers: int = 1,
) -> dict[str, Any]:
    """Tokenize checked ``sources`` into ``out_dir`` (see the module docstring); resumable.

    ``workers`` processes tokenize (0: one per CPU; 1: in this process); the output is the same
    for any number.

    Returns:
        The metadata written to ``out_dir/metadata.json``.
    """
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    if not sources:
        raise ValueError("no inputs given; pass text files, JSONL files or folders")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose a folder path")
    out.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(tokenizer, shard_tokens, text_key, sources)
    meta_path, prog_path = out / "metadata.json", out / "progress.json"

    if meta_path.exists():
        meta = _read_json(meta_path, "pass --overwrite to prepare the folder again")
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
        saved = _read_json(prog_path, "pass --overwrite to start the preparation again")
        if not _valid_progress(saved, len(sources)):
            raise ValueError(
                f"{prog_path} is damaged (not the progress record of an unfinished run); "
                "pass --overwrite to start the preparation again"
            )
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
    total = sum(s.text_bytes for s in sources)
    done = sum(s.text_bytes for s in sources[:start_src])
    t0 = time.perf_counter()
    n_new = 0  # ids tokenized by this call
    bar = _progress_bar(total, done, progress, out)

    def payloads() -> Iterator[tuple[tuple[int, int], tuple[str, Any, str]]]:
        for si in range(start_src, len(sources)):
            first = start_doc if si == start_src else 0
            for kind, payload, n in sources[si].payloads(text_key, first):
                yield (si, first), (kind, payload, sources[si].path)
                first += n

    try:
        with PayloadEncoder(tokenizer, writer.dtype, text_key, workers) as encoder:
            workers = encoder.workers  # 0 resolved to the CPU count, for the log line
            for (si, first), (ids, counts, n_bytes) in encoder.map(payloads()):
                skip = start_skip if (si, first) == (start_src, start_doc) else 0
                writer.add_batch(si, first, ids, counts, n_bytes, skip)
                n_new += len(ids) - skip
                if bar is not None:
                    bar.update(int(n_bytes.sum()))
                    rate = n_new / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(f"{n_new:,d} tok, {rate:,.0f} tok/s", refresh=False)
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
    dt = time.perf_counter() - t0
    logger.info(
        "prepared %s: %d documents, %d tokens in %d shards; tokenized %d ids in %.1fs "
        "(%.0f tok/s, %d workers)",
        out,
        meta["n_documents"],
        meta["n_tokens"],
        n_shards,
        n_new,
        dt,
        n_new / max(dt, 1e-9),
        workers,
    )
    return meta


def _progress_bar(total: int, initial: int, enabled: bool, out: Path) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"prepare {out.name}",
        dynamic_ncols=True,
    )


def prepare(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    tokenizer_name: str,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    text_key: str = "text",
    split: str = "train",
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Tokenize ``inputs`` into memmap shards in ``out_dir``.

    Args:
        inputs: text, JSONL (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``) and parquet files, and
            folders (``datasets`` ``save_to_disk`` folders, dataset repositories, text folders;
            see :mod:`nestlearn.data.readers`).
        out_dir: output folder (created); re-running after an interruption resumes.
        tokenizer_name: ``byte``, ``bpe-8192`` or ``hf:PATH`` (see :func:`get_tokenizer`).
        shard_tokens: ids per shard file (the last shard may be shorter).
        text_key: the JSONL field or table column holding each document's text.
        split: the split to read from folders that hold several (``train``, ``test``, ...).
        progress: show a tqdm bar (bytes of text, with tokens/s).
        overwrite: replace an existing prepared folder built from other inputs.
        workers: tokenizing processes (0: one per CPU; 1: this process). The output is the same
            for any number.

    Returns:
        The metadata written to ``out_dir/metadata.json``: tokenizer (name, sha256, vocab_size,
        ids), dtype, shards (file, n_tokens, sha256), n_documents, n_bytes, n_tokens, sources.

    Raises:
        ValueError: empty, binary or non-UTF-8 input, bad JSONL, a missing column, or an
            ``out_dir`` that holds a different preparation (the message names the file and fix).
    """
    tokenizer = get_tokenizer(tokenizer_name)
    sources = collect_sources(inputs, text_key, split)
    return prepare_sources(
        sources,
        out_dir,
        tokenizer,
        shard_tokens=shard_tokens,
        text_key=text_key,
        progress=progress,
        overwrite=overwrite,
        workers=workers,
    )
