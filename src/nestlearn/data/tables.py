"""Parquet files and Hugging Face ``datasets`` arrow files for ``nestlearn prepare`` (pyarrow).

Both are read a record batch at a time (parquet: one row group at a time, no pre-buffering and no
memory map, so memory stays flat whatever the file size), only the ``text_key`` column.
``datasets`` writes Arrow IPC *streams* (``save_to_disk``); IPC files are read too. See
:mod:`nestlearn.data.readers` for how files are found and what a payload is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

_READ_BLOCK = 8 << 20


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ValueError(
            'reading parquet and Hugging Face datasets folders needs pyarrow; pip install "nestlearn[data]"'
        ) from None
    return pyarrow


def _record_batches(path: Path, kind: str, text_key: str) -> Iterator[Any]:
    """Record batches of the ``text_key`` column of a parquet or arrow file, streamed."""
    pa = _pyarrow()
    if kind == "parquet":
        # No memory map (mapped pages count as this process's memory and grow with the file)
        # and no pre-buffering (it reads ahead every row group asked for: the whole file).
        pf = pa.parquet.ParquetFile(str(path), memory_map=False, pre_buffer=False)
        names = pf.schema_arrow.names
        if text_key not in names:
            _raise_no_column(path, text_key, names)
        for rg in range(pf.metadata.num_row_groups):  # one row group at a time: bounded memory
            yield from pf.iter_batches(
                batch_size=1024, row_groups=[rg], columns=[text_key], use_threads=False
            )
        return
    try:
        reader: Any = pa.ipc.open_stream(pa.input_stream(str(path)))  # what `datasets` writes
    except pa.ArrowInvalid:
        file_reader = pa.ipc.open_file(pa.OSFile(str(path)))
        reader = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
    first = True
    for batch in reader:
        if first and text_key not in batch.schema.names:
            _raise_no_column(path, text_key, batch.schema.names)
        first = False
        yield batch.select([text_key])


def _raise_no_column(path: Path, text_key: str, names: Sequence[str]) -> None:
    raise ValueError(
        f"{path}: no {text_key!r} column (found {list(names)}); pass --text-key NAME with the "
        "column that holds the document text"
    )


def _text_column(batch: Any, path: Path, text_key: str) -> Any:
    pa = _pyarrow()
    col = batch.column(0)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    if getattr(pa.types, "is_string_view", lambda t: False)(col.type):
        return col.cast(pa.large_string())
    raise ValueError(
        f"{path}: column {text_key!r} holds {col.type}, not text; pass --text-key NAME with the "
        "column that holds the document text"
    )


def scan_table_file(path: Path, kind: str, text_key: str) -> tuple[str, int, int]:
    """sha256, size and text bytes of a parquet/arrow file after checking its text column."""
    pa = _pyarrow()
    pc = pa.compute
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            h.update(block)
            size += len(block)
    row, n_docs, text_bytes = 0, 0, 0
    try:
        for batch in _record_batches(path, kind, text_key):
            col = _text_column(batch, path, text_key)
            try:
                col.validate(full=True)  # string columns must hold valid UTF-8
            except pa.ArrowInvalid:
                _raise_bad_row(path, col, row)
            has_nul = pc.match_substring(col, "\x00")
            if pc.any(has_nul).as_py():
                i = pc.index(has_nul, True).as_py()
                raise ValueError(
                    f"{path}: row {row + i} of column {text_key!r} holds a NUL (0x00) character, "
                    "so it looks like binary data, not text; clean or drop that row"
                )
            lengths = pc.binary_length(col)
            n_docs += int(pc.sum(pc.greater(lengths, 0)).as_py() or 0)
            text_bytes += int(pc.sum(lengths).as_py() or 0)
            row += len(col)
    except pa.ArrowException as e:
        raise ValueError(f"{path}: cannot read this {kind} file ({e})") from e
    if n_docs == 0:
        raise ValueError(
            f"{path} holds no non-empty {text_key!r} documents; remove it from the inputs "
            "or pass --text-key with the right column"
        )
    return h.hexdigest(), size, text_bytes


def _raise_bad_row(path: Path, col: Any, first_row: int) -> None:
    pa = _pyarrow()
    for i, value in enumerate(col.cast(pa.large_binary()).to_pylist()):
        if value is None:
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{path}: row {first_row + i} is not valid UTF-8 at byte {e.start} ({e.reason}); "
                "re-encode that text or drop the row"
            ) from None
    raise ValueError(f"{path}: rows from {first_row} are not valid Arrow strings")


def table_payloads(
    path: Path, kind: str, text_key: str, start: int
) -> Iterator[tuple[str, Any, int]]:
    """``("arrow", string array, n_docs)`` payloads of rows ``start, start + 1, ...``."""
    from nestlearn.data import readers

    pa = _pyarrow()
    pc = pa.compute
    row = 0
    for batch in _record_batches(path, kind, text_key):
        col = _text_column(batch, path, text_key)
        n = len(col)
        if row + n <= start:
            row += n
            continue
        lo = max(0, start - row)
        col = col.slice(lo)
        lengths = pc.binary_length(col).fill_null(0).to_numpy(zero_copy_only=False)
        i, size = 0, 0
        for j, ln in enumerate(lengths):
            size += int(ln)
            if size >= readers.PAYLOAD_BYTES:
                # concat_arrays copies the slice compactly: a pickled slice carries its whole buffer
                yield "arrow", pa.concat_arrays([col.slice(i, j + 1 - i)]), j + 1 - i
                i, size = j + 1, 0
        if i < len(col):
            yield "arrow", pa.concat_arrays([col.slice(i)]), len(col) - i
        row += n
