"""prepare on several worker processes: the same bytes for any worker count, and after a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nestlearn.data.readers as readers
from nestlearn.data.corpus import corpus_documents
from nestlearn.data.prepare import prepare

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _inputs(root: Path) -> list[Path]:
    """About 300 kB of real text in three formats, with empty documents among them."""
    docs = [t for _, t in corpus_documents("validation")]
    paras = [p for d in docs for p in d.split("\n\n")][:2500]
    paras[7] = ""
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": paras[:1200]}), root / "a.parquet", row_group_size=100)
    lines = "".join(json.dumps({"text": p}) + "\n" for p in paras[1200:2400])
    (root / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    (root / "c.txt").write_text("\n\n".join(paras[2400:]))
    return [root / "a.parquet", root / "b.jsonl.zst", root / "c.txt"]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_output_does_not_depend_on_the_worker_count(tmp_path: Path, monkeypatch) -> None:
    inputs = _inputs(tmp_path / "in")
    monkeypatch.setattr(readers, "PAYLOAD_BYTES", 8 << 10)  # many payloads in flight
    kw = dict(shard_tokens=7919, progress=False)
    ref = prepare(inputs, tmp_path / "w1", "bpe-8192", workers=1, **kw)
    assert len(ref["shards"]) > 5 and ref["n_skipped_empty"] >= 1
    for w in (2, 3):
        meta = prepare(inputs, tmp_path / f"w{w}", "bpe-8192", workers=w, **kw)
        assert meta == ref
        assert _snapshot(tmp_path / f"w{w}") == _snapshot(tmp_path / "w1")


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import nestlearn.data.prepare as prep
    import nestlearn.data.readers as readers
    readers.PAYLOAD_BYTES = 8 << 10
    real, done = prep._write_shard, []
    def write(path, ids):
        if len(done) == int(sys.argv[3]):
            # half of the shard on disk, then killed (no handler, no finally: SIGKILL)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(ids.tobytes()[: ids.nbytes // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, ids)
        done.append(path)
    prep._write_shard = write
    prep.prepare(sys.argv[4:], sys.argv[1], "bpe-8192", shard_tokens=int(sys.argv[2]),
                 workers=2, progress=False)
    """
)


@pytest.mark.parametrize("kill_at", [0, 3])
def test_resume_after_sigkill_mid_shard(tmp_path: Path, kill_at: int) -> None:
    inputs = [str(p) for p in _inputs(tmp_path / "in")]
    shard_tokens = 7919
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, str(out), str(shard_tokens), str(kill_at), *inputs],
        env=env,
        capture_output=True,
        timeout=300,
    )
    # run() returned, so every process holding its pipes exited: the workers did not outlive
    # their killed parent
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not (out / "metadata.json").exists()
    assert list(out.glob(".shard_*.tmp-*")), "the kill should leave a half-written shard"
    if kill_at:
        progress = json.loads((out / "progress.json").read_text())
        assert len(progress["shards"]) == kill_at
    resumed = prepare(inputs, out, "bpe-8192", shard_tokens=shard_tokens, workers=2, progress=False)
    ref = prepare(
        inputs, tmp_path / "ref", "bpe-8192", shard_tokens=shard_tokens, workers=1, progress=False
    )
    assert resumed == ref
    assert _snapshot(out) == _snapshot(tmp_path / "ref")
