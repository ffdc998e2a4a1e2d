"""nestlearn synthetic: the S-NIAH route (one model per family on the tasks' mixture)."""

from __future__ import annotations

import json

from nestlearn.cli import main


def test_sniah_trains_one_model_and_prints_a_row_per_task(tmp_path, capsys):
    argv = ["synthetic", "--task", "s_niah_1,s_niah_3", "--family", "transformer", "--dim", "32",
            "--steps", "2", "--batch-size", "2", "--num-test", "2", "--set", "train_length=64",
            "test_lengths=64,128", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "@64 %" in out and "@128 %" in out
    assert out.count("s_niah_1") == 1 and out.count("s_niah_3") == 1
    (run,) = json.loads((tmp_path / "results.json").read_text())
    assert run["tasks"] == ["s_niah_1", "s_niah_3"] and run["steps"] == 2
    assert set(run["accuracy"]["s_niah_3"]) == {"64", "128"}


def test_sniah_refuses_settings_it_does_not_read(capsys):
    argv = ["synthetic", "--task", "all-sniah", "--steps", "1", "--set", "seq_len=64"]
    assert main(argv) == 2
    assert "do not apply to S-NIAH" in capsys.readouterr().err
