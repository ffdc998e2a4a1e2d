"""prepare: inputs of every kind, refusals that name the file, resume equals an uninterrupted run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

import nestlearn.data.prepare as prep
import nestlearn.data.readers as readers
from nestlearn.cli.prepare import add_args as add_prepare_args
from nestlearn.cli.prepare import run as run_prepare
from nestlearn.data.dataset import TokenShards
from nestlearn.data.prepare import prepare
from nestlearn.data.tokenizers import get_tokenizer

EOS = 257  # the byte tokenizer's eos


def _stream(out: Path) -> np.ndarray:
    meta = json.loads((out / "metadata.json").read_text())
    parts = [np.fromfile(out / s["file"], dtype=meta["dtype"]) for s in meta["shards"]]
    return np.concatenate(parts)


def _byte_stream(*docs: str) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += [*d.encode("utf-8"), EOS]
    return out


def test_text_file_counts_and_content(tmp_path: Path) -> None:
    text = "Call me Ishmael.\r\nSome years ago — never mind how long 🐋\n"
    f = tmp_path / "moby.txt"
    f.write_bytes(text.encode("utf-8"))
    meta = prepare([f], tmp_path / "out", "byte", progress=False)
    n = len(text.encode("utf-8"))
    assert (meta["n_documents"], meta["n_bytes"], meta["n_tokens"]) == (1, n, n + 1)
    assert meta["dtype"] == "uint16"
    assert meta["tokenizer"]["name"] == "byte" and meta["tokenizer"]["vocab_size"] == 259
    assert _stream(tmp_path / "out").tolist() == _byte_stream(text)  # \r\n kept as is
    assert meta["sources"][0]["path"] == str(f.resolve())
    assert not (tmp_path / "out" / "progress.json").exists()


def test_folder_recurses_in_sorted_order(tmp_path: Path) -> None:
    d = tmp_path / "in"
    (d / "b" / "deep").mkdir(parents=True)
    (d / "a.txt").write_text("first")
    (d / "b" / "deep" / "c.md").write_text("# third")
    (d / "b" / "b.jsonl").write_text('{"text": "second-1"}\n{"text": "second-2"}\n')
    (d / "skip.csv").write_text("x,y\n1,2\n")
    (d / "skip.bin").write_bytes(b"\0\1\2")
    meta = prepare([d], tmp_path / "out", "byte", progress=False)
    assert [Path(s["path"]).name for s in meta["sources"]] == ["a.txt", "b.jsonl", "c.md"]
    assert [s["n_documents"] for s in meta["sources"]] == [1, 2, 1]
    assert meta["n_documents"] == 4
    assert _stream(tmp_path / "out").tolist() == _byte_stream(
        "first", "second-1", "second-2", "# third"
    )


def test_jsonl_documents_skips_and_text_key(tmp_path: Path) -> None:
    f = tmp_path / "docs.jsonl"
    lines = [
        {"body": "one", "id": 1},
        {"body": "", "id": 2},
        {"body": "three\nlines\n", "id": 3},
        {"body": "four ünïcode", "id": 4},
    ]
    f.write_text(
        "\n".join(json.dumps(x) for x in lines[:2])
        + "\n\n"
        + "\n".join(json.dumps(x) for x in lines[2:])
    )
    meta = prepare([f], tmp_path / "out", "byte", text_key="body", progress=False)
    docs = ["one", "three\nlines\n", "four ünïcode"]
    assert meta["n_documents"] == 3 and meta["n_skipped_empty"] == 2  # "" and the blank line
    assert meta["n_bytes"] == sum(len(x.encode()) for x in docs)
    assert _stream(tmp_path / "out").tolist() == _byte_stream(*docs)


def test_bpe_prepare_matches_tokenizer(tmp_path: Path) -> None:
    docs = ["It is a truth universally acknowledged.", "Call me Ishmael. 🐋"]
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    meta = prepare([f], tmp_path / "out", "bpe-8192", progress=False)
    tok = get_tokenizer("bpe-8192")
    want = [*tok.encode(docs[0]), tok.eos_id, *tok.encode(docs[1]), tok.eos_id]
    assert _stream(tmp_path / "out").tolist() == want
    assert meta["tokenizer"]["sha256"] == tok.sha256 and meta["n_tokens"] == len(want)


def test_uint32_for_large_vocabularies(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70_000)} | {"[UNK]": 70_000, "<|eos|>": 70_001}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|eos|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "a.txt").write_text("w1 w69999 w65536")
    meta = prepare([tmp_path / "a.txt"], tmp_path / "out", f"hf:{tmp_path}", progress=False)
    assert meta["dtype"] == "uint32"
    assert TokenShards(tmp_path / "out").get(0, 4).tolist() == [1, 69_999, 65_536, 70_001]


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.txt", b"", "empty"),
        ("blank.md", b"  \n\t\n", "empty"),
        ("image.txt", b"GIF89a\x01\x00\x00\x00", "NUL"),
        ("latin1.txt", "café au lait".encode("latin-1"), "not valid UTF-8 at byte 3"),
        ("cut.txt", "ok é".encode()[:-1], "not valid UTF-8"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n', r"bad.jsonl:2: not valid JSON"),
        ("nokey.jsonl", b'{"body": "x"}\n', "--text-key"),
        ("allempty.jsonl", b'{"text": ""}\n\n', "no non-empty"),
        ("latin1.jsonl", '{"text": "café"}\n'.encode("latin-1"), "not valid UTF-8"),
    ],
)
def test_bad_inputs_are_refused_naming_the_file(
    tmp_path: Path, name: str, content: bytes, match: str
) -> None:
    good = tmp_path / "good.txt"
    good.write_text("fine text")
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        prepare([good, bad], tmp_path / "out", "byte", progress=False)
    assert str(bad) in str(err.value) or name in str(err.value)
    assert not (tmp_path / "out" / "metadata.json").exists()
    assert not list((tmp_path / "out").glob("shard_*")) if (tmp_path / "out").exists() else True


def test_empty_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no inputs"):
        prepare([], tmp_path / "out", "byte", progress=False)
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "notes.csv").write_text("a,b")
    with pytest.raises(ValueError, match="empty_dir holds no"):
        prepare([tmp_path / "empty_dir"], tmp_path / "out", "byte", progress=False)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        prepare([tmp_path / "missing.txt"], tmp_path / "out", "byte", progress=False)


# ----------------------------------------------------------------------------- resume


def _corpus(tmp_path: Path) -> list[Path]:
    """Documents of awkward lengths for shard_tokens=64: exact-fit, spanning and tiny ones.

    With the byte tokenizer doc0 (63 bytes + eos) fills shard 0 exactly and doc1 (127 + eos)
    fills shards 1 and 2 exactly, so interruptions land on every kind of checkpoint.
    """
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    (d / "doc0.txt").write_text("a" * 63)
    (d / "doc1.txt").write_text("b" * 127)
    for i, n in enumerate([10, 200, 1, 127, 63, 64, 300, 5], start=2):
        (d / f"doc{i}.txt").write_text("".join(rng.choice(list("abcdé ✓\n"), size=n)))
    f = d / "more.jsonl"
    f.write_text("".join(json.dumps({"text": "j" * k}) + "\n" for k in (70, 0, 130, 2)))
    return [d]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.parametrize(
    "tokenizer, stop_after",
    [
        ("byte", 0),
        ("byte", 1),
        ("byte", 2),
        ("byte", 3),
        ("byte", 7),
        ("bpe-8192", 1),
        ("bpe-8192", 4),
    ],
)
def test_resume_after_interruption_equals_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenizer: str, stop_after: int
) -> None:
    inputs = _corpus(tmp_path)
    ref = prepare(inputs, tmp_path / "ref", tokenizer, shard_tokens=64, progress=False)
    assert len(ref["shards"]) > stop_after + 1

    real = prep._write_shard
    written: list[str] = []

    def crashing(path: Path, ids: np.ndarray) -> None:
        if len(written) == stop_after:  # die mid-write, leaving a temp file behind
            (path.parent / f".{path.name}.tmp-999").write_bytes(b"partial")
            raise KeyboardInterrupt
        written.append(path.name)
        real(path, ids)

    monkeypatch.setattr(prep, "_write_shard", crashing)
    with pytest.raises(KeyboardInterrupt):
        prepare(inputs, tmp_path / "out", tokenizer, shard_tokens=64, progress=False)
    assert not (tmp_path / "out" / "metadata.json").exists()
    done = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("shard_*.bin")}
    assert sorted(done) == written

    rewritten: list[str] = []

    def counting(path: Path, ids: np.ndarray) -> None:
        rewritten.append(path.name)
        real(path, ids)

    monkeypatch.setattr(prep, "_write_shard", counting)
    meta = prepare(inputs, tmp_path / "out", tokenizer, shard_tokens=64, progress=False)
    assert meta == ref
    assert _snapshot(tmp_path / "out") == _snapshot(tmp_path / "ref")
    assert not set(rewritten) & set(written)  # completed shards are not written again
    assert {
        p.name: p.stat().st_mtime_ns
        for p in (tmp_path / "out").glob("shard_*.bin")
        if p.name in done
    } == done


def test_resume_after_crash_before_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = _corpus(tmp_path)
    ref = prepare(inputs, tmp_path / "ref", "byte", shard_tokens=64, progress=False)
    real = prep.atomic_write_json

    def no_metadata(path: Path, obj: object) -> None:
        if path.name == "metadata.json":
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(prep, "atomic_write_json", no_metadata)
    with pytest.raises(KeyboardInterrupt):
        prepare(inputs, tmp_path / "out", "byte", shard_tokens=64, progress=False)
    monkeypatch.setattr(prep, "atomic_write_json", real)
    assert prepare(inputs, tmp_path / "out", "byte", shard_tokens=64, progress=False) == ref
    assert _snapshot(tmp_path / "out") == _snapshot(tmp_path / "ref")


def test_rerun_is_a_no_op_and_other_inputs_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    first = prepare([tmp_path / "a.txt"], tmp_path / "out", "byte", progress=False)

    def fail(*args: object) -> None:
        raise AssertionError("a finished folder must not be rewritten")

    monkeypatch.setattr(prep, "_write_shard", fail)
    assert prepare([tmp_path / "a.txt"], tmp_path / "out", "byte", progress=False) == first
    with pytest.raises(ValueError, match="overwrite"):
        prepare([tmp_path / "b.txt"], tmp_path / "out", "byte", progress=False)
    with pytest.raises(ValueError, match="overwrite"):
        prepare([tmp_path / "a.txt"], tmp_path / "out", "bpe-8192", progress=False)
    monkeypatch.undo()
    meta = prepare([tmp_path / "b.txt"], tmp_path / "out", "byte", progress=False, overwrite=True)
    assert meta["n_bytes"] == 4 and _stream(tmp_path / "out").tolist() == _byte_stream("beta")


def test_cli_hooks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.txt").write_text("hello world")
    parser = add_prepare_args(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            str(tmp_path / "a.txt"),
            "--out",
            str(tmp_path / "out"),
            "--tokenizer",
            "byte",
            "--no-progress",
        ]
    )
    assert run_prepare(args) == 0
    summary = capsys.readouterr().out
    assert "1 documents" in summary and "12 byte tokens" in summary
    assert TokenShards(tmp_path / "out").get(0, 12).tolist() == _byte_stream("hello world")


def test_batching_and_progress_bar_do_not_change_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _corpus(tmp_path)
    ref = prepare(inputs, tmp_path / "ref", "bpe-8192", shard_tokens=50, progress=False)
    monkeypatch.setattr(readers, "PAYLOAD_BYTES", 7)  # a batch of one or two documents at a time
    meta = prepare(inputs, tmp_path / "out", "bpe-8192", shard_tokens=50, progress=True)
    assert meta == ref
    assert _snapshot(tmp_path / "out") == _snapshot(tmp_path / "ref")
    assert "100%" in capsys.readouterr().err
