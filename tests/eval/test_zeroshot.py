"""Zero-shot tasks: readers against the shipped files, prompts, metrics, the scorer, the CLI."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nestlearn.eval.zeroshot import (
    TASKS,
    DataDirError,
    LMScorer,
    choice_metrics,
    evaluate_tasks,
    paper_row,
    parse_task_list,
    resolve_data_dir,
    rolling_windows,
    score_items,
    set_memory_updates,
)
from nestlearn.eval.zeroshot.specs import ChoiceItem, TargetItem, wikitext_detokenize
from tests.conftest import SHARED_DATASETS

needs_data = pytest.mark.skipif(
    not (SHARED_DATASETS / "piqa").is_dir(), reason=f"no shared datasets at {SHARED_DATASETS}"
)


# --------------------------------------------------------------------------- readers
@needs_data
@pytest.mark.parametrize("name", list(TASKS))
def test_reader_parses_every_row_of_the_shipped_file(name):
    spec = TASKS[name]
    rows = spec.read(SHARED_DATASETS)
    assert len(rows) == spec.rows  # PROVENANCE.md row counts
    items = [spec.to_item(r) for r in rows]
    for it in items:
        if isinstance(it, ChoiceItem):
            assert 0 <= it.gold < len(it.requests)
            assert len(it.choice_chars) == len(it.requests)
            assert all(cont.startswith(" ") for _, cont in it.requests)


@needs_data
def test_labels_match_provenance_counts():
    d = SHARED_DATASETS
    assert Counter(r["label"] for r in TASKS["piqa"].read(d)) == {0: 910, 1: 928}
    assert Counter(r["label"] for r in TASKS["boolq"].read(d)) == {1: 2033, 0: 1237}
    assert Counter(r["label"] for r in TASKS["social_iqa"].read(d)) == {
        "1": 643,
        "2": 654,
        "3": 657,
    }
    assert Counter(r["answer"] for r in TASKS["winogrande"].read(d)) == {"1": 628, "2": 639}
    easy = Counter(len(r["choices"]["text"]) for r in TASKS["arc_easy"].read(d))
    chal = Counter(len(r["choices"]["text"]) for r in TASKS["arc_challenge"].read(d))
    assert easy == {4: 2365, 3: 7, 5: 4} and chal == {4: 1165, 3: 4, 5: 3}
    # gold indices follow the answer keys, including the numeric "1".."4" labels
    golds = [TASKS["arc_easy"].to_item(r).gold for r in TASKS["arc_easy"].read(d)]
    assert set(golds) <= {0, 1, 2, 3, 4} and len(set(golds)) >= 4


@needs_data
def test_lambada_and_wikitext_structure():
    d = SHARED_DATASETS
    for row in TASKS["lambada_openai"].read(d):
        it = TASKS["lambada_openai"].to_item(row)
        assert it.context + it.target == row["text"] and " " not in it.target[1:]
    pages = [r["page"] for r in TASKS["wikitext"].read(d)]
    assert len(pages) == 62 and pages[0].startswith(" = Robert Boulter = ")
    # the split is lossless: 241,211 whitespace tokens in the whole file (PROVENANCE.md)
    assert sum(len(p.split()) for p in pages) == 241211


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("NESTLEARN_DATA_DIR", raising=False)
    with pytest.raises(DataDirError, match="piqa/valid.jsonl"):
        resolve_data_dir(None)
    with pytest.raises(DataDirError, match="does not exist"):
        resolve_data_dir(tmp_path / "nope")
    monkeypatch.setenv("NESTLEARN_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    with pytest.raises(DataDirError, match="valid.jsonl"):
        TASKS["piqa"].read(tmp_path)


def test_task_list_parsing():
    assert parse_task_list("piqa, arc_e,SIQA,lambada") == [
        "piqa",
        "arc_easy",
        "social_iqa",
        "lambada_openai",
    ]
    assert len(parse_task_list("all")) == 8
    with pytest.raises(ValueError, match="takedown"):
        parse_task_list("hellaswag")
    with pytest.raises(ValueError, match="unknown task"):
        parse_task_list("piqa,mmlu")


# --------------------------------------------------------------------------- prompts
def test_prompts_match_lm_eval_formats():
    it = TASKS["piqa"].to_item({"goal": "G", "sol1": "a", "sol2": "bb", "label": 1})
    assert it.requests == (("Question: G\nAnswer:", " a"), ("Question: G\nAnswer:", " bb"))
    assert it.gold == 1 and it.choice_chars == (1, 2)
    it = TASKS["boolq"].to_item({"passage": "P", "question": "q", "idx": 0, "label": 0})
    assert it.requests[1] == ("P\nQuestion: q?\nAnswer:", " yes") and it.gold == 0
    it = TASKS["social_iqa"].to_item(
        {
            "context": "C",
            "question": "Q?",
            "answerA": "x",
            "answerB": "y",
            "answerC": "z",
            "label": "3",
        }
    )
    assert it.requests[0] == ("Q: C Q?\nA:", " x") and it.gold == 2
    it = TASKS["winogrande"].to_item(
        {"sentence": "Tom met Ann so _ smiled .", "option1": "Tom", "option2": "Ann", "answer": "2"}
    )
    assert it.requests == (("Tom met Ann so Tom", " smiled ."), ("Tom met Ann so Ann", " smiled ."))
    assert it.gold == 1
    it = TASKS["arc_easy"].to_item(
        {
            "id": "x",
            "question": "Q",
            "choices": {"text": ["a", "b"], "label": ["1", "2"]},
            "answerKey": "2",
        }
    )
    assert it.gold == 1 and it.requests[0] == ("Question: Q\nAnswer:", " a")
    assert (
        wikitext_detokenize(" = T = \n A @-@ b , c ( d ) 1 @,@ 000 's end . \n")
        == " = T =\nA-b, c (d) 1,000's end.\n"
    )


def test_acc_norm_divides_by_choice_characters():
    item = ChoiceItem((("c", " a"), ("c", " b")), gold=1, choice_chars=(5, 20))
    # raw: -10 > -12 picks choice 0; per character: -2 < -0.6 picks choice 1
    assert choice_metrics([-10.0, -12.0], item) == {"acc": 0.0, "acc_norm": 1.0}
    tie = ChoiceItem((("c", " a"), ("c", " b")), gold=0, choice_chars=(2, 2))
    assert choice_metrics([-3.0, -3.0], tie) == {"acc": 1.0, "acc_norm": 1.0}  # first wins


# ------------------------------------------------------------ scorer on a known model
class _Cfg:
    def __init__(self, max_seq_len: int, family: str = "bigram-test") -> None:
        self.max_seq_len = max_seq_len
        self.family = family


class BigramLM(nn.Module):
    """logits[b, t] = table[idx[b, t]]: p(next | context) depends on the last token only."""

    def __init__(self, vocab: int, max_seq_len: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        table = torch.randn(vocab, vocab, generator=g, dtype=torch.float64) * 2
        table[:, -1] -= 30.0  # the last id (eos) is never the likely next token
        self.table = nn.Parameter(table)
        self.cfg = _Cfg(max_seq_len)
        self.seen: list[torch.Tensor] = []

    def forward(self, idx, *, state=None, return_state=False):
        self.seen.append(idx.clone())
        return self.table[idx], None

    def logp(self, prev: int, nxt: int) -> float:
        return float(F.log_softmax(self.table.detach()[prev], -1)[nxt])


class Chars:
    """Tokenizer: one id per character of a small alphabet; eos = last id."""

    alphabet = " abcdefghijklmnopqrstuvwxyz.?:\n"
    vocab_size = len(alphabet) + 1
    eos_id = len(alphabet)

    def encode(self, text):
        return [self.alphabet.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.alphabet[i] for i in ids if i < len(self.alphabet))


def _hand_ll(m: BigramLM, tok: Chars, context: str, cont: str) -> float:
    ids = [tok.eos_id] + tok.encode(context + cont)
    n = len(tok.encode(cont))
    return sum(m.logp(ids[i - 1], ids[i]) for i in range(len(ids) - n, len(ids)))


def test_loglikelihood_equals_hand_computation_and_truncates_left():
    tok = Chars()
    m = BigramLM(tok.vocab_size, max_seq_len=8)
    sc = LMScorer(m, tok, batch_size=3)
    reqs = [
        ("ab cd", " ef"),
        ("a", " b"),
        ("hello world this is long", " xyz."),
        ("q", " " + "ab" * 9),
    ]
    res = sc.loglikelihood(reqs)
    for (c, x), (ll, _) in zip(reqs, res):
        assert ll == pytest.approx(_hand_ll(m, tok, c, x), abs=1e-10)
    # the model saw the last 8 tokens of (eos + context + continuation) minus the final one
    ids = [tok.eos_id] + tok.encode("hello world this is long xyz.")
    assert any(row.tolist() == ids[-9:-1] for s in m.seen for row in s)
    # a continuation longer than max_length (19 > 8 tokens) is still scored in full
    assert all(s.shape[1] <= 8 for s in m.seen)


def test_encode_pair_moves_trailing_space_and_adds_document_start():
    tok = Chars()
    sc = LMScorer(BigramLM(tok.vocab_size, 16), tok)
    ctx, cont = sc.encode_pair("ab ", "c")
    assert ctx == [tok.eos_id] + tok.encode("ab") and cont == tok.encode(" c")
    assert sc.encode_pair("", "ab") == ([tok.eos_id], tok.encode("ab"))


def test_greedy_flag_and_lambada_metrics():
    tok = Chars()
    m = BigramLM(tok.vocab_size, 32)
    best = lambda prev: int(m.table[prev].argmax())  # noqa: E731
    ctx = "the end"
    chain, prev = [], tok.encode(ctx)[-1]
    for _ in range(3):
        prev = best(prev)
        chain.append(prev)
    greedy_word = tok.decode(chain)
    other = tok.decode([(chain[0] + 1) % (tok.vocab_size - 1)] + chain[1:])
    items = [TargetItem(ctx, greedy_word), TargetItem(ctx, other)]
    out = score_items(LMScorer(m, tok), "loglikelihood", items)
    assert out["acc"] == 0.5
    mean_ll = (_hand_ll(m, tok, ctx, greedy_word) + _hand_ll(m, tok, ctx, other)) / 2
    assert out["perplexity"] == pytest.approx(math.exp(-mean_ll), rel=1e-10)


def test_multiple_choice_picks_the_likely_choice():
    tok = Chars()
    m = BigramLM(tok.vocab_size, 32)
    sc = LMScorer(m, tok)
    items = []
    for ctx in ("abc", "x y", "hello"):
        choices = ["ab", "zq", "c.d"]
        lls = [_hand_ll(m, tok, ctx, " " + c) for c in choices]
        items.append(
            ChoiceItem(tuple((ctx, " " + c) for c in choices), int(np.argmax(lls)), (2, 2, 3))
        )
    assert score_items(sc, "multiple_choice", items)["acc"] == 1.0


def test_rolling_loglikelihood_is_the_sum_of_token_log_probs():
    tok = Chars()
    m = BigramLM(tok.vocab_size, 8)
    sc = LMScorer(m, tok, batch_size=4)
    text = "the quick brown fox jumps over the lazy dog."  # 44 tokens, several windows
    ids = [tok.eos_id] + tok.encode(text)
    want = sum(m.logp(ids[i - 1], ids[i]) for i in range(1, len(ids)))
    assert sc.loglikelihood_rolling([text])[0] == pytest.approx(want, abs=1e-10)
    for n in (1, 7, 8, 9, 16, 17, 23):
        toks = list(range(n))
        wins = rolling_windows(toks, 99, 8)
        assert [t for _, c in wins for t in c] == toks  # every token scored once
        assert all(len(c) + len(x) <= 9 for c, x in wins)
        assert all(len(c) + len(x) == 9 for c, x in wins[1:])  # later windows see 8 tokens


def _tiny_transformer(vocab: int, max_seq_len: int = 32):
    from nestlearn.models import build_model, preset_config

    cfg = preset_config(
        "transformer-tiny", vocab_size=vocab, dim=32, n_layers=2, n_heads=2, max_seq_len=max_seq_len
    )
    return build_model(cfg, seed=0).double()


def test_rolling_equals_token_losses_of_a_real_model_and_batches_do_not_matter():
    tok = Chars()
    m = _tiny_transformer(tok.vocab_size)
    text = "a short document."
    ids = torch.tensor([[tok.eos_id] + tok.encode(text)])
    logits, _ = m(ids[:, :-1])
    want = -F.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
    assert LMScorer(m, tok).loglikelihood_rolling([text])[0] == pytest.approx(want, abs=1e-9)
    rng = np.random.default_rng(0)
    reqs = [
        (
            "".join(rng.choice(list("abc xyz"), size=int(rng.integers(1, 40)))),
            " " + "".join(rng.choice(list("abcdef"), size=int(rng.integers(1, 6)))),
        )
        for _ in range(21)
    ]
    one = LMScorer(m, tok, batch_size=1).loglikelihood(reqs)
    many = LMScorer(m, tok, batch_size=8).loglikelihood(reqs)
    for (a, ga), (b, gb) in zip(one, many):
        assert a == pytest.approx(b, abs=1e-10) and ga == gb


def test_generate_until_is_greedy_and_stops():
    tok = Chars()
    m = BigramLM(tok.vocab_size, 64)
    sc = LMScorer(m, tok)
    prev, chain = tok.encode("ab")[-1], []
    for _ in range(6):
        prev = int(m.table[prev].argmax())
        chain.append(prev)
    full = tok.decode(chain)
    out = sc.generate_until([("ab", [], 6), ("ab", [full[3:5]], 6)])
    assert out[0] == full
    assert out[1] == full.split(full[3:5])[0]


def test_memory_update_hook():
    class Mem(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = []

        def set_memory_updates(self, enabled: bool) -> None:
            self.calls.append(enabled)

    outer = nn.Sequential(Mem(), nn.Linear(2, 2), Mem())
    assert set_memory_updates(outer, False)
    assert outer[0].calls == [False] and outer[2].calls == [False]
    assert not set_memory_updates(_tiny_transformer(8), False)


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def byte_run(tmp_path_factory):
    from nestlearn.data import get_tokenizer
    from nestlearn.train import Trainer, resolve_config
    from nestlearn.train.batches import ArrayTokens
    from tests.conftest import source_text_tokens

    tok = get_tokenizer("byte")
    arr = source_text_tokens()
    cfg = resolve_config(
        "transformer-tiny",
        None,
        [
            "model.dim=32",
            "model.n_layers=1",
            "model.n_heads=2",
            "model.max_seq_len=64",
            "data.seq_len=64",
            "data.batch_size=4",
            "train.steps=3",
            "train.eval_every=0",
            "train.progress=false",
            "train.eval_tokens=256",
        ],
    )
    run_dir = tmp_path_factory.mktemp("zs") / "run"
    Trainer(
        cfg, run_dir=run_dir, data=(tok, ArrayTokens(arr[:50000]), ArrayTokens(arr[-5000:]))
    ).fit()
    return run_dir


@needs_data
def test_cli_eval_tasks_json_equals_the_library(byte_run, capsys):
    from nestlearn.cli import main
    from nestlearn.train.run import load_run

    argv = ["eval", "--checkpoint", str(byte_run), "--tasks", "piqa,lambada"]
    argv += ["--data-dir", str(SHARED_DATASETS), "--limit", "3", "--batch-size", "4", "--json"]
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["backend"] == "native" and rec["limit"] == 3
    run = load_run(byte_run)
    want = evaluate_tasks(
        LMScorer(run.model, run.tokenizer, batch_size=4),
        ["piqa", "lambada_openai"],
        SHARED_DATASETS,
        limit=3,
    )
    for task, metrics in want.items():
        for k, v in metrics.items():
            if k != "seconds":
                assert rec["tasks"][task][k] == pytest.approx(v, rel=1e-6, nan_ok=True), (task, k)
    assert rec["paper_columns"]["PIQA acc"] == pytest.approx(100 * want["piqa"]["acc"])
    assert rec["paper_columns"]["Hella acc_n"] is None
    row = paper_row(want)
    assert row["Avg"] == pytest.approx((row["PIQA acc"] + row["LMB acc"]) / 2)
    # table output names the paper's columns
    assert main([*argv[:4], "piqa", *argv[5:-1]]) == 0
    out = capsys.readouterr().out
    assert "Wiki ppl" in out and "ARC-c acc_n" in out and "n/a" in out


def test_cli_eval_without_data_dir_explains_the_layout(byte_run, capsys, monkeypatch):
    from nestlearn.cli import main

    monkeypatch.delenv("NESTLEARN_DATA_DIR", raising=False)
    assert main(["eval", "--checkpoint", str(byte_run), "--tasks", "piqa"]) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "NESTLEARN_DATA_DIR" in err and "winogrande/dev.jsonl" in err


def test_unknown_backend_is_refused(byte_run, monkeypatch, capsys):
    from nestlearn.cli import main

    monkeypatch.setenv("NESTLEARN_EVAL_BACKEND", "vllm")
    argv = ["eval", "--checkpoint", str(byte_run), "--tasks", "piqa", "--data-dir", str(Path("."))]
    assert main(argv) == 2
    assert "unknown evaluation backend" in capsys.readouterr().err


def test_lm_eval_backend_without_lm_eval_says_how_to_install(byte_run, monkeypatch, capsys):
    import sys

    from nestlearn.cli import main

    for name in ("lm_eval", "lm_eval.api.model", "lm_eval.api.registry"):
        monkeypatch.setitem(sys.modules, name, None)  # as if lm-eval were not installed
    monkeypatch.delitem(sys.modules, "nestlearn.studies.lm_eval_adapter", raising=False)
    monkeypatch.setenv("NESTLEARN_EVAL_BACKEND", "lm-eval")
    argv = ["eval", "--checkpoint", str(byte_run), "--tasks", "piqa", "--data-dir", str(Path("."))]
    assert main(argv) == 2
    assert "pip install 'nestlearn[eval]'" in capsys.readouterr().err
