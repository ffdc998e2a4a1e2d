"""Knowledge incorporation: scoring against a naive reference, fine-tuning, perplexity, an
end-to-end run with a tiny model, resume, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from nestlearn.cli import main
from nestlearn.data.synthetic.facts import fact_set
from nestlearn.studies.knowledge import (
    KnowledgeConfig,
    answer_questions,
    corpus_ppl,
    finetune,
    run_knowledge,
    validation_ids,
)
from tests.studies.test_ttl import TOK, tiny

SMALL = dict(periods=[16, 32], n_entities=4, ft_steps=2, ppl_tokens=128, ppl_window=64)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="1..3"):
        KnowledgeConfig(levels=[0])
    with pytest.raises(ValueError, match="n_entities"):
        KnowledgeConfig(n_entities=2)
    with pytest.raises(ValueError, match="ft_lr"):
        KnowledgeConfig(ft_lr=0)
    with pytest.raises(ValueError, match="ppl_tokens"):
        KnowledgeConfig(ppl_tokens=100, ppl_window=512)


def test_answers_match_a_naive_full_sequence_scorer():
    model = tiny(2)
    facts = fact_set(0, n_entities=4)
    ctx = TOK.encode(facts.documents[0].text)
    got = answer_questions(model, TOK, facts, ctx)
    right = 0
    for q, pick in zip(facts.questions, got["picks"]):
        scores = []
        for o in q.options:
            p, opt = TOK.encode(q.prompt()), TOK.encode(" " + o)
            x = torch.tensor([ctx + p + opt])
            with torch.no_grad():
                lp = F.log_softmax(model(x)[0][0].float(), -1)
            n = len(ctx) + len(p)
            scores.append(sum(float(lp[n - 1 + i, t]) for i, t in enumerate(opt)))
        assert pick == max(range(len(scores)), key=scores.__getitem__)
        right += pick == q.answer
    assert got["acc"] == right / len(facts.questions)


def test_finetune_fits_the_documents_and_perplexity_is_exact():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    docs = [TOK.encode("Abc was born in Xyz. "), TOK.encode("Def worked as a baker. ")]
    tuned, losses = finetune(model, docs, steps=5, lr=1e-2)
    assert losses[-1] < losses[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy
    wins = [TOK.encode("hello world, again")[:9]]
    x = torch.tensor(wins)
    with torch.no_grad():
        nll = F.cross_entropy(model(x[:, :-1])[0][0], x[0, 1:])
    assert corpus_ppl(model, wins) == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_validation_windows_cover_several_documents():
    w = validation_ids(TOK, 9 * 64, 64)
    assert len(w) == 9 and all(len(x) == 65 for x in w)
    assert len({bytes(x[:16]) for x in w}) == 9


def test_run_writes_results_and_resumes(tmp_path):
    model = tiny()
    msgs: list[str] = []
    cfg = KnowledgeConfig(levels=[1], **SMALL)
    rep = run_knowledge(model, TOK, tmp_path, cfg, source="tiny", progress=msgs.append)
    s = rep["summary"]
    assert list(s) == ["none", "context", "finetune", "hope-1"]
    assert s["none"]["mean"]["ppl_change"] == 0 and s["context"]["mean"]["ppl_change"] == 0
    assert s["finetune"]["mean"]["ppl_change"] != 0 and s["hope-1"]["mean"]["ppl_change"] != 0
    assert all(0 <= v["mean"]["acc"] <= 1 for v in s.values())
    md = (tmp_path / "results.md").read_text()
    assert "| hope-1 |" in md and (tmp_path / "knowledge.png").is_file()
    assert json.loads((tmp_path / "results.json").read_text())["base_ppl"] > 1
    msgs.clear()
    run_knowledge(model, TOK, tmp_path, cfg, source="tiny", progress=msgs.append)
    assert sum("reusing" in m for m in msgs) == 4


def test_cli_end_to_end_with_a_tiny_checkpoint(tmp_path, capsys):
    run = tmp_path / "tiny"
    small = ["model.dim=32", "model.n_layers=1", "model.n_heads=2", "data.seq_len=32",
             "model.max_seq_len=32", "data.batch_size=2", "train.eval_tokens=256",
             "train.progress=false", "schedule.warmup_steps=1", "train.steps=1"]  # fmt: skip
    assert main(["train", "--preset", "transformer-tiny", "--out", str(run), *small]) == 0
    out = tmp_path / "kn"
    argv = ["knowledge", "--checkpoint", str(run), "--out", str(out), "--levels", "1",
            "--periods", "16", "--entities", "4", "--ft-steps", "1", "--ppl-tokens", "64",
            "--ppl-window", "32"]  # fmt: skip
    assert main(argv) == 0
    assert (out / "results.md").is_file() and (out / "knowledge.png").is_file()
    capsys.readouterr()
    assert main(argv) == 0
    assert "reusing" in capsys.readouterr().out
    assert main(["knowledge", "--out", str(out), "--entities", "2"]) == 2
    assert "n_entities" in capsys.readouterr().out
