"""CTNL study: configuration checks, an end-to-end run with a tiny model, resume, the CLI."""

from __future__ import annotations

import json

import pytest

from nestlearn.cli import main
from nestlearn.studies.ctnl import CTNLConfig, run_ctnl
from tests.studies.test_ttl import TOK, tiny

SMALL = dict(periods=[16, 32], n_parallel=1, n_test=2, n_nouns=2, n_verbs=1, n_adjectives=1,
             max_new=3, window=512)  # fmt: skip


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="0..3"):
        CTNLConfig(levels=[4])
    with pytest.raises(ValueError, match="repeats"):
        CTNLConfig(levels=[1, 1])
    with pytest.raises(ValueError, match="level_lr"):
        CTNLConfig(level_lr=0)
    with pytest.raises(ValueError, match="seeds"):
        CTNLConfig(seeds=[])
    with pytest.raises(ValueError, match="n_test"):
        CTNLConfig(n_test=0)


def test_run_writes_results_and_resumes(tmp_path):
    model = tiny()
    msgs: list[str] = []
    cfg = CTNLConfig(levels=[0, 1], **SMALL)
    rep = run_ctnl(model, TOK, tmp_path, cfg, source="tiny", progress=msgs.append)
    assert set(rep["summary"]) == {"none", "icl", "hope-1"}
    cells = rep["cells"]
    # ICL has no memory besides its context: B is translated the same after A
    icl = cells["seed0-icl"]["results"]
    assert icl["seq/B"] == icl["single/B"]
    hope = cells["seed0-hope-1"]["results"]
    assert hope["periods"] == [16] and all(0 <= hope[c]["chrf"] <= 100 for c in
                                           ("single/A", "single/B", "seq/A", "seq/B"))  # fmt: skip
    assert len(hope["single/A"]["hypotheses"]) == 2
    md = (tmp_path / "results.md").read_text()
    assert "| Hope-1 |" in md and "| ICL (Hope-0) |" in md and (tmp_path / "ctnl.png").is_file()
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["config"]["levels"] == [0, 1]
    # a second run reuses every cell; another level rate recomputes the Hope cell
    msgs.clear()
    run_ctnl(model, TOK, tmp_path, cfg, source="tiny", progress=msgs.append)
    assert sum("reusing" in m for m in msgs) == 3
    msgs.clear()
    cfg2 = CTNLConfig(levels=[0, 1], level_lr=0.5, **SMALL)
    run_ctnl(model, TOK, tmp_path, cfg2, source="tiny", progress=msgs.append)
    reused = [m.split(":")[0] for m in msgs if "reusing" in m]
    assert reused == ["seed0-none", "seed0-icl"]  # the level rate changes only Hope's cell
    msgs.clear()
    run_ctnl(model, TOK, tmp_path, CTNLConfig(levels=[0], **{**SMALL, "n_test": 1}),
             source="tiny", progress=msgs.append)  # fmt: skip
    assert not any("reusing" in m for m in msgs)  # other held-out data: everything again


def test_cli_end_to_end_with_a_tiny_checkpoint(tmp_path, capsys):
    run = tmp_path / "tiny"
    small = ["model.dim=32", "model.n_layers=1", "model.n_heads=2", "data.seq_len=32",
             "model.max_seq_len=32", "data.batch_size=2", "train.eval_tokens=256",
             "train.progress=false", "schedule.warmup_steps=1", "train.steps=1"]  # fmt: skip
    assert main(["train", "--preset", "transformer-tiny", "--out", str(run), *small]) == 0
    out = tmp_path / "ctnl"
    argv = ["ctnl", "--checkpoint", str(run), "--out", str(out), "--levels", "0,1",
            "--periods", "16,32", "--parallel", "1", "--test", "1", "--nouns", "2", "--verbs",
            "1", "--adjectives", "1", "--max-new", "2", "--window", "512"]  # fmt: skip
    assert main(argv) == 0
    assert (out / "results.md").is_file() and (out / "ctnl.png").is_file()
    capsys.readouterr()
    assert main(argv) == 0
    assert "reusing" in capsys.readouterr().out
    assert main(["ctnl", "--out", str(out), "--levels", "0,7"]) == 2
    assert "0..3" in capsys.readouterr().out
