"""TokenShards windows across shards, damaged folders, and the cached default corpus."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

import nestlearn.data.dataset as ds
from nestlearn.data.corpus import corpus_documents, split_documents
from nestlearn.data.dataset import TokenShards, default_corpus
from nestlearn.data.prepare import prepare
from nestlearn.data.tokenizers import get_tokenizer


@pytest.fixture()
def prepared(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    for i in range(6):
        n = int(rng.integers(1, 120))
        (tmp_path / f"d{i}.txt").write_text("".join(rng.choice(list("xyzé🐋 "), size=n)))
    prepare([tmp_path], tmp_path / "out", "byte", shard_tokens=37, progress=False)
    return tmp_path / "out"


def test_get_across_shard_boundaries_equals_concatenation(prepared: Path) -> None:
    shards = TokenShards(prepared)
    meta = shards.metadata
    full = np.concatenate(
        [np.fromfile(prepared / s["file"], dtype=np.uint16) for s in meta["shards"]]
    )
    assert len(meta["shards"]) > 3
    assert len(shards) == len(full) == meta["n_tokens"]
    assert shards.n_bytes == meta["n_bytes"] and shards.n_documents == 6
    assert int((full == shards.eos_id).sum()) == 6 and full[-1] == shards.eos_id
    rng = np.random.default_rng(0)
    windows = [(0, len(full)), (0, 0), (36, 2), (37, 37), (len(full) - 1, 1), (10, 100)]
    windows += [
        (int(s), int(rng.integers(0, len(full) - s + 1))) for s in rng.integers(0, len(full), 50)
    ]
    for start, length in windows:
        got = shards.get(start, length)
        assert got.dtype == np.uint16 and got.shape == (length,)
        np.testing.assert_array_equal(got, full[start : start + length])
    batch = shards.get_batch([0, 30, 70], 40)
    np.testing.assert_array_equal(batch, np.stack([full[0:40], full[30:70], full[70:110]]))


def test_get_bounds(prepared: Path) -> None:
    shards = TokenShards(prepared)
    for start, length in [(-1, 2), (0, len(shards) + 1), (len(shards), 1), (5, -1)]:
        with pytest.raises(IndexError, match="outside"):
            shards.get(start, length)


def test_decodes_back_to_the_documents(prepared: Path, tmp_path: Path) -> None:
    shards = TokenShards(prepared)
    tok = get_tokenizer(shards.tokenizer_name)
    stream = shards.get(0, len(shards))
    docs = tok.decode(stream, skip_special=False).split("<|eos|>")[:-1]
    assert docs == [(tmp_path / f"d{i}.txt").read_text() for i in range(6)]


def test_damaged_or_unfinished_folders(prepared: Path) -> None:
    last = prepared / TokenShards(prepared).metadata["shards"][-1]["file"]
    last.write_bytes(last.read_bytes()[:-2])
    with pytest.raises(ValueError, match="damaged"):
        TokenShards(prepared)
    (prepared / "metadata.json").rename(prepared / "progress.json")
    with pytest.raises(FileNotFoundError, match="interrupted"):
        TokenShards(prepared)
    (prepared / "progress.json").unlink()
    with pytest.raises(FileNotFoundError, match="nestlearn prepare"):
        TokenShards(prepared)


def test_default_corpus_validation_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    val = default_corpus("byte", "val", cache_dir=tmp_path)
    docs = list(corpus_documents("validation"))
    entries = split_documents("validation")
    assert val.n_documents == len(docs) == 9
    assert val.n_bytes == sum(d["bytes"] for d in entries)
    assert len(val) == val.n_bytes + val.n_documents
    first = docs[0][1].encode("utf-8")
    assert bytes(val.get(0, len(first)).astype(np.uint8)) == first
    assert val.get(len(first), 1)[0] == val.eos_id
    assert val.path.parts[-1] == "validation" and str(val.path).startswith(str(tmp_path))
    assert [s["path"] for s in val.metadata["sources"]] == [
        f"nl-corpus/{d['path']}" for d in entries
    ]
    assert not [p for p in val.path.parent.iterdir() if ".tmp-" in p.name]

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached split must not be prepared again")

    monkeypatch.setattr(ds, "prepare_sources", fail)
    assert len(default_corpus("byte", "validation", cache_dir=tmp_path)) == len(val)
    monkeypatch.setenv("NESTLEARN_CACHE", str(tmp_path))
    assert default_corpus("byte", "validation").path == val.path


def test_default_corpus_rejects_bad_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown corpus split"):
        default_corpus("byte", "dev", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="one split"):
        default_corpus("byte", "all", cache_dir=tmp_path)


def test_default_corpus_when_another_process_wins_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No lock (as without filelock): the other process publishes first; ours is discarded.
    import contextlib

    monkeypatch.setattr(ds, "_lock", lambda path: contextlib.nullcontext(False))
    real = ds.prepare_sources

    def other_process_first(sources, out, tok, **kw):  # type: ignore[no-untyped-def]
        final = Path(out).parent / "test"
        real(sources, final, tok, **kw)
        (final / "marker").write_text("theirs")
        return real(sources, out, tok, **kw)

    monkeypatch.setattr(ds, "prepare_sources", other_process_first)
    test = default_corpus("byte", "test", cache_dir=tmp_path)
    assert (test.path / "marker").read_text() == "theirs"
    assert test.n_documents == 10
    assert not [p for p in test.path.parent.iterdir() if ".tmp-" in p.name]


def _worker(cache: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    shards = default_corpus("byte", "test", cache_dir=cache)
    queue.put((str(shards.path), len(shards), json.dumps(shards.metadata, sort_keys=True)))


def test_default_corpus_concurrent_processes(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(set(results)) == 1
    path = Path(results[0][0])
    assert results[0][1] == len(TokenShards(path))
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]
