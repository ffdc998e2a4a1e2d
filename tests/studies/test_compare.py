"""``nestlearn compare``: same budget for every model, one table and one plot, early failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nestlearn.cli import main
from nestlearn.models import FAMILIES, PRESETS, Family
from nestlearn.models.families.transformer import build_transformer_block
from nestlearn.studies.compare import available_models, plan_runs, resolve_models

# two tiny models, 3 steps of 4 x 32 tokens, a small validation slice, one thread
SMALL = ["--batch-size", "4", "--seq-len", "32",
         "model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.ffn_hidden=64",
         "train.eval_tokens=512", "train.progress=false", "train.threads=1"]  # fmt: skip


def _records(out: Path) -> list[dict]:
    return json.loads((out / "compare.json").read_text())


def test_two_models_same_budget_table_and_plot(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--models", "transformer,deltanet", "--tokens", "400", "--seeds", "2",
            "--out", str(out), *SMALL]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    recs = _records(out)
    assert [(r["model"], r["seed"]) for r in recs] == [
        ("transformer-tiny", 0), ("transformer-tiny", 1), ("deltanet-tiny", 0), ("deltanet-tiny", 1)
    ]  # fmt: skip
    for r in recs:  # 400 // (4 * 32) = 3 steps for every model: the same budget
        assert r["steps"] == 3 and r["tokens"] == 384
        assert 0 < r["val_loss"] < 7 and r["val_ppl"] == pytest.approx(2.718281828 ** r["val_loss"])
        assert r["train_tok_s"] > 0 and r["wall_time_s"] > 0
    # different seeds give different models
    assert recs[0]["val_loss"] != recs[1]["val_loss"]
    md = (out / "compare.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "tiny" in ln]
    assert [r.split("|")[1].strip() for r in rows] == ["transformer-tiny", "deltanet-tiny"]
    assert all(r.count("±") == 5 for r in rows)  # loss, ppl, bpb, tok/s, wall: mean ± std
    assert "384 training tokens = 3 steps x 4 sequences x 32 tokens" in md
    assert (out / "compare.png").stat().st_size > 1000
    assert rows[0] in printed and rows[1] in printed
    for model in ("transformer-tiny", "deltanet-tiny"):
        assert (out / model / "seed0" / "metrics.jsonl").is_file()

    # a second invocation with one more model reuses the four finished runs
    stamp = (out / "deltanet-tiny" / "seed0" / "metrics.jsonl").stat().st_mtime_ns
    argv[2] = "transformer,deltanet,retnet"
    assert main(argv) == 0
    assert (out / "deltanet-tiny" / "seed0" / "metrics.jsonl").stat().st_mtime_ns == stamp
    assert [r["model"] for r in _records(out)][-2:] == ["retnet-tiny", "retnet-tiny"]
    assert recs == _records(out)[:4]


def test_unknown_model_fails_before_training(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", "--models", "transformer,nope", "--tokens", "400",
                 "--out", str(out), *SMALL]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "unknown model(s) 'nope'" in err and "deltanet" in err and "retnet-tiny" in err
    assert not out.exists()


def test_budget_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="less than one batch"):
        plan_runs(["transformer-tiny"], tokens=100, out=tmp_path, batch_size=4, seq_len=32)
    with pytest.raises(ValueError, match="not train.steps"):
        plan_runs(["transformer-tiny"], tokens=1000, out=tmp_path, overrides=["train.steps=5"])
    with pytest.raises(ValueError, match="deltanet-tiny: .*max_seq_len"):
        plan_runs(["deltanet-tiny"], tokens=10**6, out=tmp_path, seq_len=512)


def test_new_families_join_the_default_lineup() -> None:
    """A family that registers ``X-tiny`` (as hope, hope-attention and titans will) is
    comparable by its family name with no change to compare."""
    FAMILIES["cmp-fake"] = Family("cmp-fake", build_transformer_block, "test only")
    PRESETS["cmp-fake-tiny"] = dict(PRESETS["transformer-tiny"], family="cmp-fake")
    try:
        assert "cmp-fake" in available_models()
        assert available_models()[0] == "transformer"
        assert resolve_models(["cmp-fake", "transformer-760m", "cmp-fake-tiny"]) == [
            "cmp-fake-tiny",
            "transformer-760m",
        ]
    finally:
        FAMILIES.pop("cmp-fake")
        PRESETS.pop("cmp-fake-tiny")


def test_a_config_field_added_later_does_not_make_finished_runs_stale(tmp_path) -> None:
    """A run saved before a config field existed is reused when the planned value is that
    field's default, and not when the plan asks for something else."""
    import copy

    from nestlearn.studies.compare import same_config

    (run,) = plan_runs(["transformer-tiny"], tokens=8 * 256 * 2, out=tmp_path, seeds=1)
    old = copy.deepcopy(run.planned)
    del old["train"]["activation_checkpointing"]  # as saved by a version without the field
    assert same_config(run.planned, old)
    (on,) = plan_runs(
        ["transformer-tiny"], tokens=8 * 256 * 2, out=tmp_path, seeds=1,
        overrides=["train.activation_checkpointing=true"],
    )  # fmt: skip
    assert not same_config(on.planned, old)
    changed = copy.deepcopy(old)
    changed["optim"]["lr"] = changed["optim"]["lr"] * 2
    assert not same_config(run.planned, changed)
    assert not same_config(run.planned, None)


def test_a_stopped_run_is_recorded_and_the_others_go_on(tmp_path: Path, monkeypatch) -> None:
    """The trainer stops a diverged or dead run with TrainingStopped; compare records it as
    diverged for that model and still trains the rest."""
    import nestlearn.studies.compare as cmp
    from nestlearn.train.guards import TrainingStopped

    real = cmp._train_one

    def fake(run, data):  # noqa: ANN001, ANN202
        if run.model == "deltanet-tiny":
            raise TrainingStopped("loss is nan at step 2; lower optim.lr")
        return real(run, data)

    monkeypatch.setattr(cmp, "_train_one", fake)
    out = tmp_path / "cmp"
    assert main(["compare", "--models", "transformer,deltanet", "--tokens", "400",
                 "--out", str(out), *SMALL]) == 0  # fmt: skip
    recs = {r["model"]: r for r in _records(out)}
    assert "diverged" in recs["deltanet-tiny"] and "nan at step 2" in recs["deltanet-tiny"]["diverged"]
    assert recs["transformer-tiny"]["val_loss"] > 0
