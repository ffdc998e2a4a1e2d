"""The levels experiment (Fig. 7 analogue): record generator, MK-NIAH items, multiple-choice
scoring against hand-computed log-likelihoods, level periods, resume, and the command end to end
with a tiny randomly initialised Transformer++ (no SmolLM2 download)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nestlearn.cli import main
from nestlearn.data import get_tokenizer
from nestlearn.data.synthetic.records import generate_records, record_sample
from nestlearn.models import build_model, preset_config
from nestlearn.studies.levels import (
    LevelsConfig,
    build_items,
    choose,
    level_periods,
    option_logliks,
    read_document,
    run_cell,
    window_loss,
)
from nestlearn.studies.levels_run import answer_prob, plan_cells, run_levels

TOK = get_tokenizer("byte")


def _model(seed: int = 0, layers: int = 2):
    cfg = preset_config(
        "transformer-tiny", vocab_size=TOK.vocab_size, dim=32, n_layers=layers, n_heads=2
    )
    return build_model(cfg, seed=seed).float().eval()


# ------------------------------------------------------------------ generators
def test_records_are_deterministic_and_differ_by_seed_and_index():
    a = generate_records(TOK, 1500, 2, seed=3)
    b = generate_records(TOK, 1500, 2, seed=3)
    assert [r.document for r in a] == [r.document for r in b]
    assert [[q.to_dict() for q in r.questions] for r in a] == [
        [q.to_dict() for q in r.questions] for r in b
    ]
    assert a[0].document != a[1].document
    assert record_sample(TOK, 1500, 0, seed=4).document != a[0].document


def test_records_answer_in_document_and_no_leakage():
    for i in range(6):
        rec = record_sample(TOK, 1500, i, seed=1, num_questions=7)
        n = len(TOK.encode(rec.document))
        assert 1500 - 200 < n <= 1500, n  # close to the requested length, never above
        assert len(rec.questions) == 7
        for q in rec.questions:
            assert len(q.options) == 4 and 0 <= q.answer < 4
            answer = q.options[q.answer].strip()
            assert answer in rec.document, (q.kind, answer)
            assert rec.document[q.fact_char :].startswith(answer)
            for j, o in enumerate(q.options):
                assert o.strip() not in q.prompt, (q.kind, o)  # the prompt names no option
                if j != q.answer:
                    assert o.strip() not in rec.document  # distractors are not in the record
            assert len({o for o in q.options}) == 4
    # the facts sit inside the record, not all at its start
    rec = record_sample(TOK, 3000, 0, num_questions=7)
    chars = sorted(q.fact_char for q in rec.questions)
    assert chars[-1] > len(rec.document) / 3


def test_records_refuse_bad_sizes():
    with pytest.raises(ValueError, match="use length >="):
        record_sample(TOK, 100, 0)
    with pytest.raises(ValueError, match="num_questions must be 1..7"):
        record_sample(TOK, 1500, 0, num_questions=9)


def test_mk_niah_items_options_are_the_needles_and_question_follows_the_document():
    items = build_items(TOK, "mk_niah", 1024, 2, seed=0)
    again = build_items(TOK, "mk_niah", 1024, 2, seed=0)
    assert [it.doc for it in items] == [it.doc for it in again]
    for it in items:
        text = TOK.decode(it.doc)
        assert len(it.doc) + len(it.prompts[0]) == 1024  # RULER's sample: the first question
        assert len(it.prompts) == 4 and sorted(it.answers) == [0, 1, 2, 3]
        for prompt_ids, opt_ids, a in zip(it.prompts, it.options, it.answers):
            prompt = TOK.decode(prompt_ids)
            opts = [TOK.decode(o).strip() for o in opt_ids]
            assert len(opts) == 4 and all(o in text for o in opts)  # all four needles' values
            assert not any(o in prompt for o in opts)  # the question names the key only
            assert "special magic number for" in prompt
            key = prompt.split("number for ")[1].split(" mentioned")[0]
            assert f"for {key} is: {opts[a]}." in text  # the answer is that key's needle


def test_longhealth_items_fact_offsets_point_at_the_answer():
    (it,) = build_items(TOK, "longhealth", 1500, 1, seed=0, num_questions=7)
    for f, opts, a in zip(it.fact_tokens, it.options, it.answers):
        assert TOK.decode(it.doc[f : f + len(opts[a])]).startswith(TOK.decode(opts[a]).strip()[:4])


# ------------------------------------------------------------------ scoring
class _Table(torch.nn.Module):
    """A 'language model' whose next-token log-probabilities depend only on the last token:
    a fixed table ``logp[prev, next]``, so every option's log-likelihood is known by hand."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(2, 2)
        self.table = logits

    def forward(self, idx, state=None, return_state=False):
        return self.table[idx], state


def test_option_logliks_equal_hand_computed_sums():
    table = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]]))
    m = _Table(table)
    ll = option_logliks(m, None, [0, 1], [[2], [0, 2], [1, 1, 1]])
    want = [math.log(0.3), math.log(0.1) + math.log(0.2), math.log(0.6) * 3]
    assert ll == pytest.approx(want, abs=1e-6)
    # the highest log-likelihood wins: 0.3 beats 0.6 ** 3 = 0.216 and 0.02
    assert choose(ll) == 0
    assert choose([-1.0, -0.5, -0.5]) == 1  # a tie goes to the first


def test_option_logliks_match_the_model_on_the_full_sequence():
    model = _model()
    prompt, opts = [5, 6, 7, 8], [[9, 10], [11], [12, 13, 14]]
    ll = option_logliks(model, None, prompt, opts)
    for o, got in zip(opts, ll):
        seq = torch.tensor([prompt + o])
        with torch.no_grad():
            lp = torch.log_softmax(model(seq)[0][0].float(), -1)
        want = sum(float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(o))
        assert got == pytest.approx(want, abs=1e-4)
    # from a state: the same as prepending the context
    ctx = [20, 21, 22]
    with torch.no_grad():
        _, st = model(torch.tensor([ctx]), return_state=True)
    a = option_logliks(model, st, prompt, opts)
    b = option_logliks(model, None, ctx + prompt, opts)
    assert a == pytest.approx(b, abs=1e-4)


def test_level_periods():
    assert level_periods(1, 256) == [256]
    assert level_periods(3, 256) == [64, 128, 256]
    assert level_periods(3, 1024, ratio=4) == [64, 256, 1024]
    with pytest.raises(ValueError, match="multiple of 4"):
        level_periods(3, 258)


def test_reading_at_level_lr_zero_keeps_the_model_and_lr_changes_it():
    model = _model()
    doc = [(7 * i) % 250 + 1 for i in range(160)]
    frozen, loss0 = read_document(model, doc, [32, 64], lr=0.0, window=64, call_len=32)
    for p, q in zip(model.parameters(), frozen.parameters()):
        assert torch.equal(p, q)
    assert loss0 == pytest.approx(window_loss(model, doc, window=64, call_len=32), abs=1e-4)
    moved, _ = read_document(model, doc, [32, 64], lr=1.0, window=64, call_len=32)
    diff = sum(
        float((p - q).detach().abs().sum()) for p, q in zip(model.parameters(), moved.parameters())
    )
    assert diff > 0


def test_run_cell_modes_and_levels_zero_is_the_question_alone():
    model = _model()
    cfg = LevelsConfig(window=64, call_len=32, periods=(32,), num_questions=3)
    items = build_items(TOK, "longhealth", 900, 1, seed=0, num_questions=3)
    icl = run_cell(model, items, 0, None, cfg)
    it = items[0]
    for row, p, o in zip(icl["questions"], it.prompts, it.options):
        assert row["loglik"] == pytest.approx(option_logliks(model, None, p, o), abs=1e-3)
    assert icl["reading_loss"] > 0 and icl["n_questions"] == 3
    ctx = run_cell(model, items, 0, None, cfg, mode="context")
    assert ctx["questions"][0]["loglik"] != icl["questions"][0]["loglik"]
    with pytest.raises(ValueError, match="mode must be"):
        run_cell(model, items, 0, None, cfg, mode="both")


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="unknown task"):
        LevelsConfig(tasks=("qasper",))
    with pytest.raises(ValueError, match="multiple of call_len"):
        LevelsConfig(window=100, call_len=64)
    with pytest.raises(ValueError, match="multiple of 4"):
        LevelsConfig(periods=(250,), levels=(3,))
    with pytest.raises(ValueError, match="levels must be"):
        LevelsConfig(levels=(-1,))


# ------------------------------------------------------------------ runner and command
def _small_cfg(**kw) -> LevelsConfig:
    base = {"tasks": ("longhealth",), "doc_length": 900, "num_docs": 1, "num_questions": 2,
            "levels": (0, 1), "periods": (32,), "window": 64, "call_len": 32}  # fmt: skip
    return LevelsConfig(**{**base, **kw})


def test_plan_cells():
    cfg = _small_cfg(tasks=("longhealth", "mk_niah"), niah_lengths=(700, 1024), levels=(0, 1, 2),
                     periods=(32, 64))  # fmt: skip
    keys = [(t, n, k, p, m) for t, n, k, p, m in plan_cells(cfg)]
    assert keys[:3] == [("longhealth", 900, 0, None, "context"), ("longhealth", 900, 0, None,
                        "window"), ("longhealth", 900, 1, 32, "window")]  # fmt: skip
    assert len(keys) == 3 * (2 + 2 * 2)


def test_run_levels_resumes_and_reruns_changed_settings(tmp_path):
    calls = []

    def load():
        calls.append(1)
        return _model(), TOK

    cfg = _small_cfg()
    out = tmp_path / "lv"
    res = run_levels(out, load, cfg, model_name="tiny")
    assert len(calls) == 1 and len(res["cells"]) == 3
    assert (out / "results.md").is_file() and (out / "levels.png").is_file()
    first = json.loads((out / "results.json").read_text())
    # finished cells are reused without loading the model
    lines = []
    res2 = run_levels(out, load, cfg, model_name="tiny", progress=lines.append)
    assert len(calls) == 1 and sum("reusing" in s for s in lines) == 3
    assert [c["accuracy"] for c in res2["cells"]] == [c["accuracy"] for c in first["cells"]]
    # a stopped run: one cell missing is the only one run again
    (out / "cells" / "longhealth-900-L1-P32.json").unlink()
    lines = []
    run_levels(out, load, cfg, model_name="tiny", progress=lines.append)
    assert len(calls) == 2 and sum("reusing" in s for s in lines) == 2
    # report only: the missing cell is listed, not run, and the report holds the others
    (out / "cells" / "longhealth-900-L1-P32.json").unlink()
    lines = []
    res3 = run_levels(out, load, cfg, model_name="tiny", progress=lines.append, report_only=True)
    assert len(calls) == 2 and len(res3["cells"]) == 2
    assert any("not finished (report only)" in s for s in lines)
    assert "| 1 level, P=32 |" not in (out / "results.md").read_text()
    run_levels(out, load, cfg, model_name="tiny")
    assert len(calls) == 3
    # another level lr: only the cells that depend on it run again
    lines = []
    run_levels(out, load, _small_cfg(level_lr=0.5), model_name="tiny", progress=lines.append)
    assert sum("reusing" in s for s in lines) == 2 and "L1-P32: running" in "\n".join(lines)
    # another model: nothing is reused
    lines = []
    run_levels(out, load, cfg, model_name="other", progress=lines.append)
    assert not any("reusing" in s for s in lines)


def test_cli_levels_end_to_end_with_a_tiny_checkpoint(tmp_path, capsys):
    run = tmp_path / "tiny"
    small = ["model.dim=32", "model.n_layers=1", "model.n_heads=2", "data.seq_len=32",
             "model.max_seq_len=32", "data.batch_size=2", "train.eval_tokens=256",
             "train.progress=false", "schedule.warmup_steps=1", "train.steps=1"]  # fmt: skip
    assert main(["train", "--preset", "transformer-tiny", "--out", str(run), *small]) == 0
    out = tmp_path / "lv"
    argv = ["levels", "--checkpoint", str(run), "--out", str(out), "--doc-length", "900",
            "--num-docs", "1", "--num-questions", "2", "--niah-lengths", "700", "--num-niah", "1",
            "--levels", "0,2", "--periods", "64", "--window", "64", "--call-len", "32",
            "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    md = (out / "results.md").read_text()
    assert "## LongHealth-style records, 900 tokens" in md and "## MK-NIAH-1, 700 tokens" in md
    assert "| 2 |" in md and "In context" in md and (out / "levels.png").is_file()
    res = json.loads((out / "results.json").read_text())
    assert {c["key"] for c in res["cells"]} == {
        "longhealth-900-context", "longhealth-900-L0", "longhealth-900-L2-P64",
        "mk_niah-700-context", "mk_niah-700-L0", "mk_niah-700-L2-P64"}  # fmt: skip
    assert res["questions"]["longhealth-900-L2-P64"][0]["loglik"]
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("reusing") == 6


def test_cli_levels_refuses_bad_options(tmp_path, capsys):
    assert main(["levels", "--out", str(tmp_path), "--tasks", "qasper"]) == 2
    assert "longhealth, mk_niah" in capsys.readouterr().out
    assert main(["levels", "--out", str(tmp_path), "--levels", "0,x"]) == 2
    assert "--levels" in capsys.readouterr().out
    assert main(["levels", "--out", str(tmp_path), "--window", "100"]) == 2
    assert "multiple of call_len" in capsys.readouterr().out


def test_answer_prob_by_hand():
    cell = {"questions": [{"loglik": [0.0, 0.0, 0.0, 0.0], "answer": 2},
                          {"loglik": [math.log(3), 0.0, 0.0, 0.0], "answer": 0}]}  # fmt: skip
    assert answer_prob(cell) == pytest.approx((0.25 + 0.5) / 2)
