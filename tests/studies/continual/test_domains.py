"""Domain-stream forgetting: matrix shape, determinism, learning, the summary and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nestlearn.studies.continual.domains import (
    _SpreadWindows,
    available_domains,
    domain_tokens,
    run_domains,
    summarize,
)

TINY = {"dim": 32, "n_layers": 1, "n_heads": 2}
FAST = {"steps_per_phase": 2, "batch_size": 2, "seq_len": 32, "eval_tokens": 64, "threads": 1}


def test_matrix_shape_files_and_progress(tmp_path):
    lines: list[str] = []
    torch.set_num_threads(2)  # the run itself uses 1 (FAST) and must restore this
    res = run_domains(
        tmp_path, models=("transformer-tiny", "hope-tiny"), domains=("austen", "sotu"),
        model_overrides=TINY, progress=lines.append, **FAST,
    )  # fmt: skip
    assert torch.get_num_threads() == 2
    assert list(res["models"]) == ["transformer-tiny", "hope-tiny"]
    assert res["rows"] == ["before training", "after phase 1 (austen)", "after phase 2 (sotu)"]
    for m in res["models"].values():
        for key in ("ppl", "bpb", "loss"):
            P = np.asarray(m[key])
            assert P.shape == (3, 2) and np.isfinite(P).all() and (P > 0).all()
        # ppl and bits/byte are both the same mean loss (byte tokens; eos scores 0 bytes)
        assert np.allclose(np.exp(m["loss"]), m["ppl"])
        assert len(m["train_loss"]) == 4
        assert [p["domain"] for p in m["phases"]] == ["austen", "sotu"]
        assert m["config"]["dim"] == 32 and m["config"]["vocab_size"] == 259
        s = m["summary"]
        assert s["forgetting_ppl"] == pytest.approx(m["ppl"][2][0] - m["ppl"][1][0])
        assert list(s["forgetting_bpb_by_domain"]) == ["austen"]
    # one line before training and one per phase, per model
    assert len(lines) == 2 * 3 and "phase 2/2 (sotu)" in lines[-1]
    assert json.loads((tmp_path / "domains.json").read_text()) == json.loads(json.dumps(res))
    md = (tmp_path / "domains.md").read_text()
    assert "| after phase 1 (austen) |" in md and "## hope-tiny" in md and "forgetting" in md
    assert (tmp_path / "domains.png").stat().st_size > 1000


def test_same_seed_same_numbers(tmp_path):
    kw = {"models": ("titans-tiny",), "domains": ("shakespeare", "austen"),
          "model_overrides": TINY, **FAST}  # fmt: skip
    a = run_domains(tmp_path / "a", seed=3, **kw)
    b = run_domains(tmp_path / "b", seed=3, **kw)
    c = run_domains(tmp_path / "c", seed=4, **kw)
    ma, mb, mc = (r["models"]["titans-tiny"] for r in (a, b, c))
    assert ma["ppl"] == mb["ppl"] and ma["train_loss"] == mb["train_loss"]
    assert ma["ppl"] != mc["ppl"]


def test_training_on_a_domain_lowers_its_held_out_loss(tmp_path):
    res = run_domains(
        tmp_path, models=("transformer-tiny",), domains=("shakespeare",), steps_per_phase=20,
        batch_size=2, seq_len=64, lr=1e-2, eval_tokens=1024, threads=1, model_overrides=TINY,
    )  # fmt: skip
    loss = res["models"]["transformer-tiny"]["loss"]
    # from ~ln(259) = 5.56 nats at init; 20 steps at lr 1e-2 reach unigram level (~3.3) or better
    assert loss[0][0] > 5.0 and loss[1][0] < loss[0][0] - 1.5, loss
    assert res["models"]["transformer-tiny"]["summary"]["forgetting_ppl"] is None  # one phase


def test_summary_forgetting_by_hand():
    ppl = [[9.0, 9.0, 9.0], [4.0, 8.0, 8.0], [5.0, 3.0, 7.0], [6.0, 4.0, 2.0]]
    bpb = [[math.log2(v) for v in row] for row in ppl]
    s = summarize({"ppl": ppl, "bpb": bpb}, ["a", "b", "c"], ["a", "b", "c"])
    assert s["final_ppl_mean"] == pytest.approx(4.0)
    assert s["forgetting_ppl_by_domain"] == {"a": 2.0, "b": 1.0}
    assert s["forgetting_ppl"] == pytest.approx(1.5)
    assert s["forgetting_bpb"] == pytest.approx((math.log2(6 / 4) + math.log2(4 / 3)) / 2)


def test_held_out_windows_spread_over_the_whole_stream():
    tokens = np.arange(1000)
    w = _SpreadWindows(tokens, seq_len=10, n_windows=5)
    assert w.starts[0] == 0 and w.starts[-1] == 1000 - 11 and len(w) == 51
    assert np.array_equal(w.get(20, 11), tokens[w.starts[2] : w.starts[2] + 11])
    with pytest.raises(ValueError, match="whole windows"):
        w.get(5, 11)


def test_domains_have_disjoint_train_and_test_text():
    assert set(available_domains()) == {"austen", "shakespeare", "sotu"}  # moby_dick: no test
    train, test = domain_tokens("austen", "train"), domain_tokens("austen", "test")
    assert len(train) > 3_000_000 and len(test) > 400_000
    assert test[:2000].tobytes() not in train.tobytes()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"domains": ("austen", "poe")}, r"unknown domain 'poe'.*austen.*shakespeare.*sotu"),
        ({"domains": ("moby_dick",)}, r"moby_dick.*no test split"),
        ({"domains": ("austen", "austen")}, r"repeat"),
        ({"domains": ()}, r"domains is empty"),
        ({"models": ("gpt-5",)}, r"unknown model 'gpt-5'.*hope-tiny"),
        ({"steps_per_phase": 0}, r"steps_per_phase must be >= 1, got 0"),
        ({"eval_tokens": 16, "seq_len": 32}, r"eval_tokens=16.*eval_tokens >= 32"),
        ({"lr": 0.0}, r"lr must be > 0"),
    ],
)
def test_bad_arguments_raise_helpful_errors(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        run_domains(tmp_path, **{**FAST, **kwargs})
    assert not (tmp_path / "domains.json").exists()
