"""NIAH / BABILong scoring: RULER string match, chunked-prefill decoding, reports, commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nestlearn.cli import main
from nestlearn.data import get_tokenizer
from nestlearn.data.synthetic.niah import generate_niah
from nestlearn.eval.babilong import babilong_correct
from nestlearn.eval.niah import (
    clean_prediction,
    depth_grid,
    evaluate_niah,
    generate_answers,
    niah_table,
    plot_niah_heatmap,
    string_match_all,
    summarize,
)
from nestlearn.models import ModelConfig, build_model
from nestlearn.models.generation import generate

BABI = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "babi"


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models gain nothing from more threads, and lose 10-100x when the CPU is shared
    torch.set_num_threads(1)


def _tiny(vocab: int = 259):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, max_seq_len=64, init_std=0.2)
    return build_model(cfg, seed=1)


def _make_run(tmp_path: Path) -> Path:
    from nestlearn.train.checkpoint import save_checkpoint
    from nestlearn.train.config import dump_config, resolve_config

    cfg = resolve_config(
        "transformer-tiny",
        None,
        ["model.vocab_size=259", "model.dim=32", "model.n_layers=1", "model.n_heads=2"],
    )
    run = tmp_path / "run"
    run.mkdir()
    dump_config(cfg, run / "config.yaml")
    save_checkpoint(run / "checkpoints", 3, build_model(cfg.model, seed=0).state_dict())
    return run


def test_string_match_all_is_rulers_recall():
    assert string_match_all("The number is 1234567.", ["1234567"]) == 1.0
    assert string_match_all(
        "1234567 and 7654321", ["1234567", "7654321", "1111111"]
    ) == pytest.approx(2 / 3)
    assert string_match_all("ABC-def", ["abc-DEF"]) == 1.0  # case-insensitive
    assert string_match_all("123456", ["1234567"]) == 0.0
    assert clean_prediction("  a\tb\x00c\n") == "a\nb\nc"
    with pytest.raises(ValueError):
        string_match_all("x", [])


def test_chunked_prefill_decoding_equals_full_recompute():
    tok = get_tokenizer("byte")
    model = _tiny()
    samples = generate_niah("s_niah_1", tok, 400, 3, max_new_tokens=10)
    got = generate_answers(model, tok, samples, batch_size=2, prefill_chunk=37)
    for s, text in zip(samples, got):
        idx = torch.as_tensor(s.input_ids)[None]
        full, _ = generate(model, idx, 10, temperature=0.0, eos_id=tok.eos_id, use_state=False)
        ids = full[0, idx.shape[1] :].tolist()
        if tok.eos_id in ids:
            ids = ids[: ids.index(tok.eos_id)]
        assert text == tok.decode(ids)
    assert len(set(got)) >= 1 and all(isinstance(t, str) for t in got)


def test_evaluate_records_scores_and_reports(tmp_path):
    tok = get_tokenizer("byte")
    model = _tiny()
    records = evaluate_niah(model, tok, ["s_niah_1", "mv_niah"], [700], 4, max_new_tokens=6)
    assert len(records) == 8
    for r in records:
        assert r["score"] == string_match_all(r["prediction"], r["answers"])
        assert 0 <= r["depth"] <= 100 and r["length"] == 700
    assert [r["depth"] for r in records[:4]] == [0.0, 10.0, 20.0, 30.0]  # the heat-map grid
    table = niah_table(records)
    assert "S-NIAH-1 (pass-key)" in table and "MV-NIAH" in table and "samples per cell: 4" in table
    png = plot_niah_heatmap(records, tmp_path / "h.png")
    assert png is not None and png.stat().st_size > 1000


def test_summary_and_depth_grid_average_the_right_cells():
    records = [
        {"task": "s_niah_2", "length": 1024, "depth": 0.0, "score": 1.0},
        {"task": "s_niah_2", "length": 1024, "depth": 2.0, "score": 0.0},  # binned to 0%
        {"task": "s_niah_2", "length": 2048, "depth": 50.0, "score": 1.0},
        {"task": "mq_niah", "length": 1024, "depth": 30.0, "score": 0.5},
    ]
    assert summarize(records) == {"s_niah_2": {1024: 50.0, 2048: 100.0}, "mq_niah": {1024: 50.0}}
    depths, lengths, grid = depth_grid(records, "s_niah_2")
    assert lengths == [1024, 2048] and depths[0] == 0.0 and depths[5] == 50.0
    assert grid[0, 0] == 50.0 and grid[5, 1] == 100.0
    assert np.isnan(grid[1, 0]) and np.isnan(grid[0, 1])


def test_babilong_label_rule():
    labels = ["bathroom", "garden", "hallway", "kitchen", "office", "Mary", "John"]
    assert babilong_correct("garden.", "garden", "Where is Mary?", labels)
    assert babilong_correct(
        " The milk is in the Garden\nkitchen", "garden", "Where is the milk?", labels
    )
    assert not babilong_correct("garden or kitchen", "garden", "Where is Mary?", labels)
    assert not babilong_correct("the kitchen", "garden", "Where is Mary?", labels)
    # a label named in the question is not held against the answer
    assert babilong_correct("John gave it to Mary", "John", "Who gave the apple to Mary?", labels)
    assert not babilong_correct("gardens", "garden", "Where is Mary?", labels)


def test_niah_command_writes_table_records_and_heatmap(tmp_path, capsys):
    run = _make_run(tmp_path)
    out = tmp_path / "niah"
    argv = [
        "niah",
        "--checkpoint",
        str(run),
        "--tasks",
        "s_niah_1,mk_niah_1",
        "--lengths",
        "640,768",
    ]
    assert main([*argv, "--samples", "3", "--max-new-tokens", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "S-NIAH-1 (pass-key)" in printed and "MK-NIAH-1" in printed
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 * 3
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["scores"]) == {"s_niah_1", "mk_niah_1"} and summary["samples_per_cell"] == 3
    assert (out / "table.txt").is_file() and (out / "niah_heatmap.png").stat().st_size > 1000


def test_niah_command_generate_only_and_errors(tmp_path, capsys):
    out = tmp_path / "prompts"
    argv = [
        "niah",
        "--generate-only",
        "--tokenizer",
        "byte",
        "--tasks",
        "s_niah_3",
        "--lengths",
        "1k",
    ]
    assert main([*argv, "--samples", "2", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and len(rows[0]["input_ids"]) + 128 == 1024
    assert rows[0]["answers"][0] in rows[0]["prompt"]
    capsys.readouterr()
    assert main(["niah", "--tasks", "s_niah_7", "--out", str(out)]) == 2
    assert "unknown --tasks" in capsys.readouterr().err
    assert main(["niah", "--lengths", "4q", "--out", str(out), "--checkpoint", "x"]) == 2


@pytest.mark.skipif(not BABI.is_dir(), reason="../shared/datasets/babi not present")
def test_babilong_command(tmp_path, capsys):
    run = _make_run(tmp_path)
    out = tmp_path / "bl"
    argv = ["babilong", "--checkpoint", str(run), "--tasks", "qa1,qa4", "--lengths", "0,512"]
    assert main([*argv, "--samples", "2", "--babi-dir", str(BABI), "--out", str(out)]) == 0
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 8 and {r["task"] for r in records} == {"qa1", "qa4"}
    assert all(r["correct"] in (0.0, 1.0) for r in records)
    assert "0 (facts only)" in capsys.readouterr().out
    assert (out / "babilong.png").is_file()
