"""Class-incremental classification: data splits, constrained decoding against a naive
reference, Hope at level lr 0 = ICL, the frozen fast-weight copy = the stacked model, EWC's
penalty, metrics and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from nestlearn.cli import main
from nestlearn.data import get_tokenizer
from nestlearn.models import build_model, preset_config
from nestlearn.models.ntp import ntp_forward
from nestlearn.studies.continual.classify import (
    CILData,
    CILResult,
    Demo,
    EWCLearner,
    HopeLearner,
    LabelTrie,
    _finish,
    frozen_transformer,
    load_benchmark,
    predict,
    reset_attention,
    run_class_incremental,
)
from tests.conftest import SHARED_DATASETS

needs_data = pytest.mark.skipif(
    not (SHARED_DATASETS / "clinc150").is_dir(), reason=f"no datasets at {SHARED_DATASETS}"
)
TOK = get_tokenizer("byte")


def _model(seed: int = 0, layers: int = 2):
    cfg = preset_config(
        "transformer-tiny", vocab_size=TOK.vocab_size, dim=32, n_layers=layers, n_heads=2
    )
    return build_model(cfg, seed=seed).eval()


def _toy_data() -> CILData:
    tasks = [["red", "green"], ["blue", "black"]]
    words = {"red": "apple", "green": "grass", "blue": "sky", "black": "night"}
    train = {c: [f"the {w} number {i}" for i in range(4)] for c, w in words.items()}
    test = {c: [f"a {w} again {i}" for i in range(3)] for c, w in words.items()}
    return CILData("toy", tasks, train, test)


# ------------------------------------------------------------------ data
@needs_data
def test_clinc_tasks_are_the_ten_domains():
    d = load_benchmark("clinc", SHARED_DATASETS)
    assert [len(t) for t in d.tasks] == [15] * 10
    assert len(set(d.classes)) == 150 and "oos" not in d.classes
    assert all(len(d.test[c]) == 30 for c in d.classes)
    assert all(len(d.train[c]) == 100 for c in d.classes)
    v = load_benchmark("clinc", SHARED_DATASETS, test_split="val")
    assert all(len(v.test[c]) == 20 for c in v.classes)


@needs_data
def test_banking_tasks_and_heldout_val_split():
    d = load_benchmark("banking", SHARED_DATASETS)
    assert [len(t) for t in d.tasks] == [8] * 7 + [7] * 3
    assert len(set(d.classes)) == 77
    v = load_benchmark("banking", SHARED_DATASETS, test_split="val")
    for c in v.classes:  # held-out utterances are not trained on
        assert len(v.test[c]) == 10 and not set(v.test[c]) & set(v.train[c])
        assert len(v.train[c]) == len(d.train[c]) - 10


def test_bad_benchmark_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="clinc, banking"):
        load_benchmark("dbpedia", tmp_path)
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_benchmark("banking", tmp_path)
    with pytest.raises(ValueError, match="icl, ewc, hope"):
        run_class_incremental(_model(), TOK, _toy_data(), "finetune")


# ------------------------------------------------------------------ decoding
def test_trie_refuses_ambiguous_labels():
    with pytest.raises(ValueError, match="identically"):
        LabelTrie({"a": [1, 2], "b": [1, 2]})
    with pytest.raises(ValueError, match="prefix"):
        LabelTrie({"a": [1, 2, 3], "b": [1, 2]})


def _naive_predict(model, context: list[int], prompt: list[int], labels: dict[str, list[int]]):
    """Greedy over the allowed next tokens, one full forward per step, no state."""
    out: list[int] = []
    while True:
        alive = {c: ids for c, ids in labels.items() if ids[: len(out)] == out}
        done = [c for c, ids in alive.items() if ids == out]
        if done:
            return done[0]
        allowed = sorted({ids[len(out)] for ids in alive.values()})
        with torch.no_grad():
            logits, _ = model(torch.tensor([context + prompt + out]))
        out.append(max(allowed, key=lambda t: float(logits[0, -1, t])))


def test_constrained_decoding_equals_naive_reference():
    torch.manual_seed(0)
    model = _model()
    labels = {c: TOK.encode(" " + c + "\n") for c in ("card arrival", "card linking", "cash",
                                                       "cancel transfer", "card")}  # fmt: skip
    trie = LabelTrie(labels)
    ctx = TOK.encode("Query: hello\nIntent: cash\n")
    with torch.no_grad():
        _, state = model(torch.tensor([ctx]), state=model.init_state(1))
    for q in ("where is my card", "stop it", "money please", "x"):
        prompt = TOK.encode(f"Query: {q}\nIntent:")
        assert predict(model, state, prompt, trie) == _naive_predict(model, ctx, prompt, labels)


# ------------------------------------------------------------------ methods
def test_hope_at_level_lr_zero_is_icl_and_lr_changes_it():
    data = _toy_data()
    kw = dict(shots=3, eval_per_class=3, window=96, periods=(8, 16))
    icl = run_class_incremental(_model(), TOK, data, "icl", **kw)
    hope0 = run_class_incremental(_model(), TOK, data, "hope", level_lr=0.0, **kw)
    assert hope0.acc_matrix == icl.acc_matrix and hope0.stream_tokens == icl.stream_tokens


def test_frozen_copy_equals_the_stacked_model_after_learning():
    torch.manual_seed(0)
    base = _model(layers=2)
    learner = HopeLearner(base, 64, periods=(8,), lr=0.5, targets="all", call_len=16)
    demos = [Demo("x", TOK.encode("Query: abc\nIntent:"), TOK.encode(" red\n")) for _ in range(4)]
    learner.observe(demos)
    learner.flush()
    assert learner.state.position % 8 == 0
    frozen = frozen_transformer(learner.model, learner.state, base)
    moved = sum((a - b).abs().sum() for a, b in zip(frozen.parameters(), base.parameters()))
    assert moved > 0  # the fast weights learned something
    x = torch.tensor([TOK.encode("Query: abd\nIntent: red")])
    # the stacked model reading the query without learning from it (no targets); a plain call
    # of an ntp model would also learn from the query's own tokens
    with torch.no_grad():
        state = reset_attention(learner.model, learner.state)
        want = ntp_forward(learner.model, x, torch.full_like(x, -100), state=state).logits
        got, _ = frozen(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_ewc_penalty_keeps_weights_near_the_previous_task():
    data = _toy_data()

    def drift(lam: float) -> float:
        ln = EWCLearner(_model(), 96, lr=1e-2, epochs=3, batch_size=4, ewc_lambda=lam, seed=0)
        mk = lambda c: [Demo(c, TOK.encode(f"Query: {t}\nIntent:"), TOK.encode(f" {c}\n"))  # noqa: E731
                        for t in data.train[c]]  # fmt: skip
        ln.observe(mk("red") + mk("green"))
        anchor = {n: p.detach().clone() for n, p in ln.params.items()}
        fisher = {n: f.clone() for n, f in ln.fisher.items()}
        assert all((f >= 0).all() for f in fisher.values()) and any(
            f.sum() > 0 for f in fisher.values()
        )
        ln.observe(mk("blue") + mk("black"))
        # the EWC penalty term itself: the first task's Fisher-weighted distance
        return sum(float((fisher[n] * (p.detach() - anchor[n]).pow(2)).sum())
                   for n, p in ln.params.items())  # fmt: skip

    assert drift(1e4) < 0.5 * drift(0.0)


def test_metrics_average_final_and_backward_transfer():
    r = CILResult("b", "m", [["a"], ["b"], ["c"]], acc=[0.9, 0.6, 0.5],
                  acc_matrix=[[0.9], [0.5, 0.7], [0.3, 0.4, 0.8]])  # fmt: skip
    _finish(r)
    assert r.average_accuracy == pytest.approx(2.0 / 3)
    assert r.final_accuracy == 0.5
    assert r.backward_transfer == pytest.approx(((0.3 - 0.9) + (0.4 - 0.7)) / 2)


def test_model_is_not_modified_by_a_run():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_class_incremental(model, TOK, _toy_data(), "ewc", shots=2, eval_per_class=1, window=64)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------ CLI
@needs_data
def test_cli_clinc_two_tasks_writes_report_and_resumes(tmp_path, capsys):
    run = tmp_path / "tiny"
    small = ["model.dim=32", "model.n_layers=1", "model.n_heads=2", "data.seq_len=32",
             "model.max_seq_len=32", "data.batch_size=2", "train.eval_tokens=256",
             "train.progress=false", "schedule.warmup_steps=1", "train.steps=1"]  # fmt: skip
    assert main(["train", "--preset", "transformer-tiny", "--out", str(run), *small]) == 0
    out = tmp_path / "cl"
    argv = ["continual", "--benchmark", "clinc", "--method", "icl,hope", "--checkpoint", str(run),
            "--data-dir", str(SHARED_DATASETS), "--tasks", "2", "--shots", "1", "--window", "128",
            "--periods", "16,32", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    md = (out / "class_incremental.md").read_text()
    assert "| icl |" in md and "| hope |" in md and (out / "clinc.png").is_file()
    res = json.loads((out / "clinc-hope.json").read_text())
    assert len(res["acc"]) == 2 and res["n_eval"] == [15, 30]
    capsys.readouterr()
    assert main(argv) == 0
    assert "reusing" in capsys.readouterr().out


def test_cli_rejects_bad_benchmark_and_method(tmp_path, capsys):
    assert main(["continual", "--benchmark", "dbpedia", "--out", str(tmp_path)]) == 2
    assert "clinc, banking, domains" in capsys.readouterr().out
    assert main(["continual", "--method", "inca", "--out", str(tmp_path)]) == 2
    assert "icl, ewc, hope" in capsys.readouterr().out
