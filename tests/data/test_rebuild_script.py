"""scripts/rebuild_corpus.py stays in sync with the vendored archive and manifest (no network)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from nestlearn.data.corpus import corpus_dir

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rebuild_corpus.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rebuild_corpus", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_manifest_is_what_the_script_writes(script: ModuleType) -> None:
    archive = corpus_dir() / "nl-corpus.tar.xz"
    docs = script.read_archive(archive)
    manifest = script.build_manifest(docs, archive.read_bytes())
    on_disk = (corpus_dir() / "manifest.json").read_text(encoding="utf-8")
    assert script.dump_manifest(manifest) == on_disk
    assert json.loads(on_disk) == manifest


@pytest.mark.slow
def test_deterministic_tar_reproduces_the_vendored_archive(script: ModuleType) -> None:
    archive = corpus_dir() / "nl-corpus.tar.xz"
    rebuilt = script.build_archive(script.read_archive(archive))
    assert rebuilt == archive.read_bytes()
