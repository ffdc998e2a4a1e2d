"""nestlearn reproduce's study stages (levels, CTNL, knowledge, vit-optim): the smoke suite's
settings end to end on a tiny trained transformer, resume from the cache, the report section,
and the skip (never a crash) when the pretrained model is absent."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nestlearn.studies import reproduce_studies as rs
from nestlearn.studies.reproduce import SUITES, Reproduction, _step, stage_key, write_index


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> SimpleNamespace:
    """A transformer run folder trained for one step, shaped like the suite's finished runs."""
    from nestlearn.cli import main

    run = tmp_path_factory.mktemp("runs") / "transformer-tiny-seed0"
    small = ["model.dim=32", "model.n_layers=1", "model.n_heads=2", "data.seq_len=32",
             "data.batch_size=2", "train.eval_tokens=256", "train.progress=false",
             "schedule.warmup_steps=1", "train.steps=1"]  # fmt: skip
    assert main(["train", "--preset", "transformer-tiny", "--out", str(run), *small]) == 0
    (run / "compare_result.json").write_text('{"val_loss": 5.0}')
    cfg = SimpleNamespace(model=SimpleNamespace(family="transformer"))
    return SimpleNamespace(model="transformer-tiny", seed=0, run_dir=run, cfg=cfg)


def _run(suite: Any, out: Path, runs: list, compute: bool = True, gguf: Any = None):
    res = Reproduction(suite=dataclasses.asdict(suite))
    costs: dict[str, dict[str, Any]] = {}
    lines: list[str] = []

    def step(stage: str, label: str, key: Path, fn: Any, *args: Any) -> Any:
        cost = costs.setdefault(stage, {"items": 0, "timed": 0, "seconds": 0.0})
        return _step(label, key, fn, *args, cost=cost, compute=compute)

    rs.studies_stage(suite, out / "cache", res, out, step, lines.append, runs=runs, gguf=gguf)
    return res, costs, lines


def _index(suite: Any, res: Reproduction, out: Path) -> str:
    results = {**dataclasses.asdict(res), "suite": dataclasses.asdict(suite), "meta": {}}
    return write_index(results, out).read_text()


def test_smoke_studies_end_to_end_resume_and_report(tmp_path, tiny_run, monkeypatch) -> None:
    pytest.importorskip("sklearn")
    suite = SUITES["smoke"]
    res, costs, _ = _run(suite, tmp_path, [tiny_run])
    assert set(res.studies) == set(rs.STUDIES)
    for name, v in res.studies.items():
        assert "error" not in v and "skipped" not in v, (name, v)
        assert (tmp_path / "studies" / name / "results.md").is_file()
    lv = res.studies["levels"]
    assert {(c["mode"], c["levels"]) for c in lv["cells"]} == {("context", 0), ("window", 0),
                                                               ("window", 1)}  # fmt: skip
    assert set(res.studies["ctnl"]["summary"]) == {"none", "icl", "hope-1"}
    assert set(res.studies["knowledge"]["summary"]) == {"none", "context", "finetune", "hope-1"}
    assert [r["optimizer"] for r in res.studies["vit_optim"]["rows"]] == ["adamw", "muon", "m3"]
    assert all(c == {"items": 1, "timed": 1, "seconds": c["seconds"]} for c in costs.values())
    assert set(costs) == {"levels", "CTNL", "knowledge", "vit-optim"}
    for name in rs.STUDIES:  # one cache item per study, named after its model
        (item,) = (tmp_path / "cache" / name).glob("*.json")
        assert item.name.startswith("vit_optim-" if name == "vit_optim"
                                    else f"{name}-transformer-tiny-seed0-")  # fmt: skip

    # a second run reads every study back from the cache and computes nothing
    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("a cached study was computed again")

    for name in ("levels", "ctnl", "knowledge"):
        monkeypatch.setitem(rs.RUNNERS, name, boom)
    monkeypatch.setattr(rs, "_vit_optim", boom)
    again, costs2, _ = _run(suite, tmp_path, [tiny_run])
    assert json.loads(json.dumps(again.studies)) == json.loads(json.dumps(res.studies))
    assert all(c["items"] == 1 and c["timed"] == 1 for c in costs2.values())

    text = _index(suite, again, tmp_path)
    assert "## 7b. Studies: levels, CTNL, knowledge incorporation, M3 on a ViT" in text
    for title in ("### Effect of levels", "### Continual translation", "### Knowledge",
                  "### M3 against AdamW and Muon"):  # fmt: skip
        assert title in text
    assert "| task | tokens | cell | accuracy % | answer prob. | wall s |" in text
    assert "| longhealth | 900 | 1 level(s), P=32 |" in text
    assert "| icl |" in text and "| hope-1 |" in text and "| finetune |" in text
    assert "| adamw | 0.01 (edge)" not in text  # a one-point grid has no edge
    assert "| m3 | 0.01 | 1 |" in text and "± 0.0000" not in text  # one seed: no std
    assert "a model this suite trained" in text  # the plumbing-only warning
    for name in rs.STUDIES:
        assert f"(studies/{name}/" in text and (tmp_path / again.plots[f"study {name}"]).is_file()


def test_absent_pretrained_model_skips_the_level_studies(tmp_path, monkeypatch) -> None:
    """Missing files skip a study with the reason in the report; nothing is loaded or fetched."""
    monkeypatch.setenv("NESTLEARN_CACHE", str(tmp_path / "empty-cache"))
    suite = dataclasses.replace(SUITES["smoke"], ttl_model="smollm2-135m", vit_optim=None)
    res, costs, lines = _run(suite, tmp_path, [])
    assert set(res.studies) == {"levels", "ctnl", "knowledge"} and not costs
    why = res.studies["ctnl"]["skipped"]
    no_pkg = "the `gguf` package is not installed" in why  # the reason where it is absent
    assert "smollm2-135m is not on this machine" in why or no_pkg
    assert "nestlearn pretrained smollm2-135m --out DIR" in why or no_pkg
    assert all(v == {"skipped": why} for v in res.studies.values())
    assert sum("skipped" in line for line in lines) == 3
    text = _index(suite, res, tmp_path)
    assert text.count(f"**Skipped:** {why}.") == 3 and "M3 against" not in text
    assert not (tmp_path / "empty-cache").exists()  # nothing was downloaded
    res, _, _ = _run(suite, tmp_path, [], gguf=tmp_path / "none.gguf")
    assert "none.gguf is not a file" in res.studies["levels"]["skipped"] or no_pkg
    res, _, _ = _run(dataclasses.replace(suite, ttl_model="run:transformer"), tmp_path, [])
    assert "no finished `transformer` run" in res.studies["knowledge"]["skipped"]
    # a suite that names no study writes no section
    none = dataclasses.replace(suite, levels=None, ctnl=None, knowledge=None)
    assert "7b." not in _index(none, Reproduction(suite={}), tmp_path)


def test_finished_studies_are_read_back_when_their_model_is_gone(tmp_path, monkeypatch) -> None:
    """A study that finished on SmolLM2 (or a --gguf file) stays in the report after the model
    is removed, in a report-only run as in a resumed one; other settings' items are not taken."""
    monkeypatch.setenv("NESTLEARN_CACHE", str(tmp_path / "empty-cache"))
    suite = dataclasses.replace(SUITES["smoke"], ttl_model="smollm2-135m", vit_optim=None)
    cache = tmp_path / "cache"
    done = {"source": "gguf:SmolLM2.gguf", "window": 64, "level_lr": 0.1, "ratio": 4, "cells": []}
    key = stage_key(cache, "levels", "levels-gguf-SmolLM2_gguf", suite)
    key.parent.mkdir(parents=True)
    key.write_text(json.dumps(done))
    other = dataclasses.replace(suite, ctnl={**suite.ctnl, "n_test": 3})
    stale = stage_key(cache, "ctnl", "ctnl-smollm2-135m", other)  # another suite's settings
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"summary": {}}))
    for compute in (True, False):
        res, _, lines = _run(suite, tmp_path, [], compute=compute)
        assert res.studies["levels"] == done
        assert "skipped" in res.studies["ctnl"] and "skipped" in res.studies["knowledge"]
        assert any("read back from levels-gguf-SmolLM2_gguf-" in line for line in lines)
    assert not (tmp_path / "empty-cache").exists()  # nothing was downloaded


def test_report_only_lists_studies_not_run_yet(tmp_path, tiny_run) -> None:
    res, costs, _ = _run(SUITES["smoke"], tmp_path, [tiny_run], compute=False)
    assert res.studies == {} and not (tmp_path / "studies").exists()
    text = _index(SUITES["smoke"], res, tmp_path)
    assert text.count("**Not run** yet.") == 4


def test_vit_settings_default_to_the_commands_and_refuse_unknown_keys() -> None:
    import argparse

    from nestlearn.cli import vit_optim as cli

    p = argparse.ArgumentParser()
    cli.add_args(p)
    assert rs.vit_settings({}) == cli.settings_from_args(p.parse_args(["--out", "x"]))
    s = rs.vit_settings({"steps": 200, "dim": 32, "lrs": (1e-2, 3e-3), "seeds": 2})
    assert (s.train.steps, s.train.warmup, s.train.vit.dim, s.seeds) == (200, 10, 32, 2)
    assert s.grid("m3") == (3e-3, 1e-2) and s.timing_widths == (32, 128)
    with pytest.raises(ValueError, match="unknown vit-optim settings"):
        rs.vit_settings({"stepz": 1})


def test_study_keys_change_with_their_own_settings_only(tmp_path) -> None:
    suite = SUITES["smoke"]
    k = stage_key(tmp_path, "ctnl", "ctnl-x", suite)
    more = dataclasses.replace(suite, ctnl={**suite.ctnl, "n_test": 3})
    assert stage_key(tmp_path, "ctnl", "ctnl-x", more) != k
    assert stage_key(tmp_path, "vit_optim", "v", more) == stage_key(tmp_path, "vit_optim", "v",
                                                                    suite)  # fmt: skip
    other = dataclasses.replace(suite, ttl_model="smollm2-135m")
    assert stage_key(tmp_path, "levels", "l", other) != stage_key(tmp_path, "levels", "l", suite)


def test_suites_size_the_studies_as_documented() -> None:
    smoke, small, medium = SUITES["smoke"], SUITES["small"], SUITES["medium"]
    assert smoke.ttl_model == "run:transformer" and "transformer" in smoke.models
    assert small.ttl_model == medium.ttl_model == "smollm2-135m"
    for name in rs.STUDIES:  # every suite names every study; medium at the commands' defaults
        assert getattr(smoke, name) and getattr(small, name) and getattr(medium, name) == {}
    assert smoke.vit_optim["steps"] <= 10 and small.vit_optim["seeds"] == 2
    assert small.levels["levels"] == (0, 3) and small.knowledge["levels"] == (3,)
