"""prepare reads parquet, datasets folders, dataset repos and compressed JSONL; refusals name the row."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from nestlearn.data.prepare import prepare

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")

EOS = 257
DOCS = ["first document", "", "zweites Dokument — ünïcode 🐋", "third\nwith lines\n"]
WANT = [d for d in DOCS if d]


def _stream(out: Path) -> list[int]:
    meta = json.loads((out / "metadata.json").read_text())
    parts = [np.fromfile(out / s["file"], dtype=meta["dtype"]) for s in meta["shards"]]
    return np.concatenate(parts).tolist()


def _bytes(*docs: str) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += [*d.encode(), EOS]
    return out


def _jsonl(docs: list[str], key: str = "text") -> bytes:
    return "".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()


def _write_parquet(path: Path, docs: list[str | None], key: str = "text", rows: int = 2) -> None:
    table = pa.table({"id": list(range(len(docs))), key: pa.array(docs, pa.string())})
    pq.write_table(table, path, row_group_size=rows)


def _save_to_disk(folder: Path, docs: list[str], n_files: int = 2) -> None:
    """The layout `datasets.Dataset.save_to_disk` writes: arrow IPC streams + state.json."""
    folder.mkdir(parents=True)
    names = [f"data-{i:05d}-of-{n_files:05d}.arrow" for i in range(n_files)]
    per = -(-len(docs) // n_files)
    for i, name in enumerate(names):
        table = pa.table({"text": pa.array(docs[i * per : (i + 1) * per], pa.large_string())})
        with (
            pa.OSFile(str(folder / name), "wb") as sink,
            pa.ipc.new_stream(sink, table.schema) as w,
        ):
            for batch in table.to_batches(max_chunksize=1):
                w.write_batch(batch)
    (folder / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": n} for n in names], "_fingerprint": "x"})
    )
    (folder / "dataset_info.json").write_text(json.dumps({"features": {"text": {}}}))


@pytest.mark.parametrize("kind", ["jsonl.gz", "jsonl.zst", "parquet"])
def test_compressed_and_columnar_files(tmp_path: Path, kind: str) -> None:
    f = tmp_path / f"docs.{kind}"
    if kind == "jsonl.gz":
        f.write_bytes(gzip.compress(_jsonl(DOCS)))
    elif kind == "jsonl.zst":
        # two frames, as pzstd and concatenated dumps write them
        half = _jsonl(DOCS[:2]), _jsonl(DOCS[2:])
        c = zstandard.ZstdCompressor()
        f.write_bytes(c.compress(half[0]) + c.compress(half[1]))
    else:
        _write_parquet(f, DOCS)
    meta = prepare([f], tmp_path / "out", "byte", progress=False)
    assert _stream(tmp_path / "out") == _bytes(*WANT)
    assert meta["n_documents"] == 3 and meta["n_skipped_empty"] == 1
    assert meta["n_bytes"] == sum(len(d.encode()) for d in WANT)
    src = meta["sources"][0]
    assert src["kind"] == ("parquet" if kind == "parquet" else "jsonl")
    assert src["n_bytes"] == f.stat().st_size and src["n_documents"] == 3


def test_parquet_text_key_nulls_and_small_payloads(tmp_path: Path, monkeypatch) -> None:
    import nestlearn.data.readers as readers

    f = tmp_path / "t.parquet"
    docs = [f"row {i} " + "x" * (i % 7) for i in range(50)]
    _write_parquet(f, [*docs[:10], None, *docs[10:]], key="content", rows=7)
    with pytest.raises(ValueError, match="no 'text' column.*--text-key"):
        prepare([f], tmp_path / "bad", "byte", progress=False)
    ref = prepare([f], tmp_path / "ref", "byte", text_key="content", progress=False)
    monkeypatch.setattr(readers, "PAYLOAD_BYTES", 20)  # payloads of a row or two
    meta = prepare([f], tmp_path / "out", "byte", text_key="content", progress=False)
    assert meta == ref and meta["n_skipped_empty"] == 1
    assert _stream(tmp_path / "out") == _bytes(*docs)


def test_datasets_save_to_disk_folder_and_dict(tmp_path: Path) -> None:
    docs = [f"document number {i}" for i in range(7)]
    _save_to_disk(tmp_path / "ds", docs)
    meta = prepare([tmp_path / "ds"], tmp_path / "out", "byte", progress=False)
    assert _stream(tmp_path / "out") == _bytes(*docs)
    assert [Path(s["path"]).name for s in meta["sources"]] == [
        "data-00000-of-00002.arrow",
        "data-00001-of-00002.arrow",
    ]
    # a DatasetDict: one folder per split, chosen with split=
    root = tmp_path / "dd"
    _save_to_disk(root / "train", docs[:4], n_files=1)
    _save_to_disk(root / "test", docs[4:], n_files=1)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    prepare([root], tmp_path / "tr", "byte", progress=False)
    assert _stream(tmp_path / "tr") == _bytes(*docs[:4])
    prepare([root], tmp_path / "te", "byte", split="test", progress=False)
    assert _stream(tmp_path / "te") == _bytes(*docs[4:])
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\].*--split"):
        prepare([root], tmp_path / "x", "byte", split="validation", progress=False)


def test_dataset_repo_folder_reads_data_files_of_one_split(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "README.md").write_text("---\nlicense: odc-by\n---\n# A dataset card, not a document")
    _write_parquet(repo / "data" / "train-00000-of-00002.parquet", ["a0", "a1"])
    _write_parquet(repo / "data" / "train-00001-of-00002.parquet", ["b0"])
    (repo / "data" / "test-00000-of-00001.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(_jsonl(["held out"]))
    )
    meta = prepare([repo], tmp_path / "out", "byte", progress=False)
    assert _stream(tmp_path / "out") == _bytes("a0", "a1", "b0")
    assert all("README" not in s["path"] for s in meta["sources"])
    prepare([repo], tmp_path / "test", "byte", split="test", progress=False)
    assert _stream(tmp_path / "test") == _bytes("held out")
    # a repo whose files name no split (e.g. FineWeb-Edu's sample/10BT/000_00000.parquet)
    flat = tmp_path / "flat" / "sample" / "10BT"
    flat.mkdir(parents=True)
    _write_parquet(flat / "000_00000.parquet", ["x"])
    _write_parquet(flat / "001_00000.parquet", ["y"])
    prepare([tmp_path / "flat"], tmp_path / "flat_out", "byte", progress=False)
    assert _stream(tmp_path / "flat_out") == _bytes("x", "y")


@pytest.mark.parametrize(
    "name, make, match",
    [
        ("nul.parquet", lambda p: _write_parquet(p, ["ok", "bad\x00row"]), r"row 1 .*NUL"),
        ("empty.parquet", lambda p: _write_parquet(p, ["", None]), "no non-empty"),
        ("trunc.jsonl.gz", lambda p: p.write_bytes(gzip.compress(_jsonl(["x" * 999]))[:-30]), "decompress"),
        ("badline.jsonl.zst", lambda p: p.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "a"}\n{oops\n')), r"badline.jsonl.zst:2: not valid JSON"),
        ("latin.jsonl.gz", lambda p: p.write_bytes(gzip.compress('{"text": "café"}\n'.encode("latin-1"))), r"not valid UTF-8 at byte 13 \(line 1\)"),
        ("notes.txt.gz", lambda p: p.write_bytes(gzip.compress(b"hello")), "decompress it or convert it"),
        ("ints.parquet", lambda p: pq.write_table(pa.table({"text": [1, 2]}), p), "holds int64, not text"),
    ],
)  # fmt: skip
def test_bad_inputs_are_refused_naming_file_and_row(tmp_path: Path, name, make, match) -> None:
    bad = tmp_path / name
    make(bad)
    with pytest.raises(ValueError, match=match) as err:
        prepare([bad], tmp_path / "out", "byte", progress=False)
    assert name in str(err.value)
    assert not (tmp_path / "out").exists()
