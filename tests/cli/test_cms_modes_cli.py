"""`nestlearn train / eval / generate` with CMS ``objective=ntp`` and ``mode=outer``."""

from __future__ import annotations

import json

import pytest
import torch

from nestlearn.cli import main
from nestlearn.train.checkpoint import load_latest

SMALL = [
    "model.dim=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "data.seq_len=16",
    "model.max_seq_len=16",
    "data.batch_size=2",
    "train.eval_tokens=64",
    "train.progress=false",
    "schedule.warmup_steps=1",
]
NTP = ["model.mixer.cms.objective=ntp", "model.mixer.cms.periods=[2,4]",
       "model.mixer.cms.lr=2.0", "model.mixer.cms.learn_lr=false"]  # fmt: skip


@pytest.fixture(scope="module")
def ntp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ntp") / "run"
    args = ["train", "--preset", "hope-attention-tiny", "--out", str(out), *SMALL, *NTP]
    assert main([*args, "train.steps=2"]) == 0
    return out


def test_eval_and_generate_run_the_driver_and_refuse_state_out(ntp_run, tmp_path, capsys):
    text = tmp_path / "doc.txt"
    text.write_text("Alice lives in Paris. Bob lives in Rome. " * 3, encoding="utf-8")
    base = ["eval", "--checkpoint", str(ntp_run), "--text", str(text), "--json", "--seq-len", "16"]
    assert main([*base, "--tokens", "64"]) == 0
    learning = json.loads(capsys.readouterr().out)
    assert main([*base, "--tokens", "64", "--freeze-memory"]) == 0
    frozen = json.loads(capsys.readouterr().out)
    assert abs(learning["loss"] - frozen["loss"]) > 1e-4  # eval runs the in-context updates
    assert main([*base, "--tokens", "64", "--stream"]) == 0  # streams continue the state
    # a state whose last token's term is pending cannot be saved: refused before any work
    s = tmp_path / "s.safetensors"
    assert main([*base, "--tokens", "64", "--state-out", str(s)]) == 2
    err = capsys.readouterr().err
    assert "cms.objective=ntp" in err and "--freeze-memory" in err and not s.exists()
    assert main([*base, "--tokens", "64", "--freeze-memory", "--state-out", str(s)]) == 0
    assert s.exists()
    gen = ["generate", "--checkpoint", str(ntp_run), "--prompt", "Al", "--max-new-tokens", "5"]
    assert main(gen) == 0
    assert main([*gen, "--state-out", str(tmp_path / "g.safetensors")]) == 2
    assert "--freeze-memory" in capsys.readouterr().err


def test_train_outer_mode_updates_levels_on_their_schedule(tmp_path):
    out = tmp_path / "outer"
    over = ["model.mixer.cms.mode=outer", "model.mixer.cms.periods=[2,4]", "train.steps=3"]
    assert main(["train", "--preset", "hope-attention-tiny", "--out", str(out), *SMALL, *over]) == 0
    sd = load_latest(out / "checkpoints").model
    assert int(sd["blocks.0.ffn.outer_count"]) == 3
    # level 1 (every 2 steps) holds step 3's gradient, waiting for step 4
    assert torch.count_nonzero(sd["blocks.0.ffn.levels.1.acc_w_down_weight"]) > 0
