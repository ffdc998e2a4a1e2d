"""The nestlearn command: error cases, train -> eval -> generate, SIGINT + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nestlearn.cli import main

SMALL = [
    "model.dim=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "data.seq_len=32",
    "model.max_seq_len=32",
    "data.batch_size=4",
    "train.eval_tokens=1024",
    "train.progress=false",
    "schedule.warmup_steps=2",
]


def test_list_shows_families_and_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "transformer" in out and "transformer-tiny" in out and "transformer-1.3b" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--preset", "transformer-tinny"], "did you mean transformer-tiny"),
        (["train", "--preset", "transformer-tiny", "optim.lr=-1"], "optim.lr must be > 0"),
        (["train", "--preset", "transformer-tiny", "train.stepz=3"], "did you mean train.steps"),
        (["train", "--preset", "transformer-tiny", "data.tokenizer=nope"], "nope"),
        (["eval", "--checkpoint", "/nonexistent/run"], "does not exist"),
        (["generate", "--checkpoint", "/nonexistent/run"], "does not exist"),
    ],
)
def test_errors_name_the_problem(argv, needle, capsys, tmp_path):
    code = main(argv + ["--out", str(tmp_path / "r")] if argv[0] == "train" else argv)
    assert code == 2
    assert needle in capsys.readouterr().err


def test_train_without_preset_or_config_explains(capsys):
    assert main(["train"]) == 2
    assert "--preset NAME or --config" in capsys.readouterr().err


def test_train_eval_generate_round_trip(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", "--preset", "transformer-tiny", "--out", str(run), "train.steps=4", *SMALL])
        == 0
    )
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--tokens", "2048", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["tokens"] == 2048 and ev["loss"] > 0 and ev["bpb"] > 0
    text = tmp_path / "doc.txt"
    text.write_text("It is a truth universally acknowledged. " * 40, encoding="utf-8")
    assert main(["eval", "--checkpoint", str(run), "--text", str(text), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == str(text)
    gen = [
        "generate",
        "--checkpoint",
        str(run),
        "--prompt",
        "The ",
        "--max-new-tokens",
        "20",
        "--seed",
        "1",
    ]
    assert main(gen) == 0
    a = capsys.readouterr().out
    assert main(gen) == 0
    assert a == capsys.readouterr().out and a.startswith("The ")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    assert main(["eval", "--checkpoint", str(run), "--text", str(bad)]) == 2
    assert "is not UTF-8" in capsys.readouterr().err


def test_config_file_with_overrides(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "preset: transformer-tiny\ntrain:\n  steps: 2\noptim:\n  lr: 0.001\n", encoding="utf-8"
    )
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), *SMALL]) == 0
    saved = (run / "config.yaml").read_text()
    assert "lr: 0.001" in saved and "steps: 2" in saved
    cfg.write_text("train:\n  steps: [1, 2]\n", encoding="utf-8")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r2")]) == 2


def test_sigint_saves_checkpoint_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "nestlearn.cli",
        "train",
        "--preset",
        "transformer-tiny",
        "--out",
        str(run),
        "train.steps=100000",
        "train.ckpt_every=0",
        "train.eval_every=0",
        *SMALL,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 3
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in out
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(ckpts) == 1
    step = int(ckpts[0].split("_")[1])
    assert step >= 3
    # resume with a shorter total so it finishes quickly
    assert main(["train", "--resume", str(run), f"train.steps={step + 2}"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r][-2:] == [step + 1, step + 2]
