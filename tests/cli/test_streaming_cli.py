"""generate / eval with --state-in, --state-out and --freeze-memory (docs/streaming.md)."""

from __future__ import annotations

import json

import pytest
import torch

from nestlearn.cli import main
from nestlearn.models import load_state
from nestlearn.models.generation import generate
from nestlearn.models.state_io import read_state_info
from nestlearn.train.run import load_run

SMALL = [
    "model.dim=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.mixer.chunk_size=8",
    "data.seq_len=32",
    "model.max_seq_len=32",
    "data.batch_size=2",
    "train.steps=2",
    "train.eval_tokens=256",
    "train.progress=false",
    "schedule.warmup_steps=1",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    a, b = root / "a", root / "b"
    assert main(["train", "--preset", "titans-tiny", "--out", str(a), *SMALL]) == 0
    assert main(["train", "--preset", "titans-tiny", "--out", str(b), *SMALL, "model.dim=48"]) == 0
    return a, b


GEN = ["--max-new-tokens", "6", "--temperature", "0.8", "--seed", "3"]


def test_generate_state_out_then_in_continues_the_stream(runs, tmp_path, capsys):
    run_dir, _ = runs
    s1, s2 = tmp_path / "s1.safetensors", tmp_path / "s2.safetensors"
    argv = ["generate", "--checkpoint", str(run_dir), *GEN]
    assert main([*argv, "--prompt", "Alice ", "--state-out", str(s1)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("Alice ") and f"saved to {s1}" in out.err
    assert main([*argv, "--prompt", "Bob ", "--state-in", str(s1), "--state-out", str(s2)]) == 0
    text2 = capsys.readouterr().out.rstrip("\n")
    # the same two calls in the library: eos + prompt, sample, feed the last token, save;
    # then the second prompt continues that state directly (no eos in between)
    run = load_run(run_dir)
    tok, model = run.tokenizer, run.model
    ids1 = [tok.eos_id, *tok.encode("Alice ")]
    out1, st = generate(model, torch.tensor([ids1]), 6, temperature=0.8, seed=3, eos_id=tok.eos_id)
    with torch.no_grad():
        _, st = model(out1[:, -1:], state=st)
    saved1 = load_state(s1, model, batch_size=1)
    assert saved1.position == st.position == out1.shape[1]
    for (m0, _), (m1, _) in zip(st.layers, saved1.layers, strict=True):
        for x, y in zip(m0.inner.weights, m1.inner.weights, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    ids2 = tok.encode("Bob ")
    out2, _ = generate(
        model, torch.tensor([ids2]), 6, temperature=0.8, seed=3, eos_id=tok.eos_id, state=saved1
    )
    new = [t for t in out2[0, len(ids2) :].tolist() if t != tok.eos_id]
    assert text2 == "Bob " + tok.decode(new)
    assert load_state(s2, model).position == saved1.position + out2.shape[1]
    assert read_state_info(s2)["source"] == str(run.checkpoint)


def test_state_of_another_model_exits_2_naming_both(runs, tmp_path, capsys):
    a, b = runs
    s = tmp_path / "a.safetensors"
    assert main(["generate", "--checkpoint", str(a), *GEN, "--state-out", str(s)]) == 0
    capsys.readouterr()
    for cmd in (["generate", *GEN], ["eval", "--text", __file__, "--tokens", "64"]):
        assert main([cmd[0], "--checkpoint", str(b), *cmd[1:], "--state-in", str(s)]) == 2
        err = capsys.readouterr().err
        assert str(a) in err and str(b) in err and "dim=32 in the file, 48 here" in err
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(s.read_bytes()[:100])
    assert main(["generate", "--checkpoint", str(a), *GEN, "--state-in", str(corrupt)]) == 2
    assert "not a readable state file" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(a), "--num-samples", "2", "--state-out", "x"]) == 2
    assert "--num-samples 1" in capsys.readouterr().err


def test_eval_stream_state_round_trip_and_freeze(runs, tmp_path, capsys):
    run_dir, _ = runs
    text = tmp_path / "doc.txt"
    text.write_text("Alice lives in Paris. Bob lives in Rome. " * 4, encoding="utf-8")
    s = tmp_path / "e.safetensors"
    base = ["eval", "--checkpoint", str(run_dir), "--text", str(text), "--json", "--seq-len", "16"]
    assert main([*base, "--tokens", "100", "--state-out", str(s)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["mode"] == "stream" and first["tokens"] == 100
    model = load_run(run_dir).model
    assert load_state(s, model).position == 101
    # continuing from the state scores the same text differently than a fresh stream
    assert main([*base, "--tokens", "100", "--state-in", str(s)]) == 0
    cont = json.loads(capsys.readouterr().out)
    assert main([*base, "--tokens", "100", "--stream"]) == 0
    fresh = json.loads(capsys.readouterr().out)
    assert fresh["loss"] == first["loss"] and cont["loss"] != fresh["loss"]
    # frozen memory: another score, and the saved memory weights stay at the learned M_0
    fz = tmp_path / "f.safetensors"
    assert main([*base, "--tokens", "100", "--freeze-memory", "--state-out", str(fz)]) == 0
    frozen = json.loads(capsys.readouterr().out)
    assert frozen["loss"] != fresh["loss"]
    assert all(m.inner is None for m, _ in load_state(fz, model).layers)
    assert main([*base, "--tokens", "64"]) == 0  # the windowed default is unchanged
    assert json.loads(capsys.readouterr().out)["mode"] == "windows"
