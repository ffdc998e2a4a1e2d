"""The lm-eval adapter gives the native scorer's numbers (skipped without lm-eval).

Install the optional extra to run these: ``pip install 'nestlearn[eval]'``.
"""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval not installed: pip install 'nestlearn[eval]'")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer  # noqa: E402
from lm_eval.tasks.winogrande import preprocess_winogrande as lm_wino  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from nestlearn.data import get_tokenizer  # noqa: E402
from nestlearn.eval.zeroshot import TASKS, LMScorer, evaluate_tasks, rolling_windows  # noqa: E402
from nestlearn.eval.zeroshot.specs import wikitext_detokenize  # noqa: E402
from nestlearn.models import build_model, preset_config  # noqa: E402
from nestlearn.studies.lm_eval_adapter import NestlearnLM, evaluate_with_lm_eval  # noqa: E402
from tests.conftest import SHARED_DATASETS  # noqa: E402

needs_data = pytest.mark.skipif(
    not (SHARED_DATASETS / "piqa").is_dir(), reason=f"no shared datasets at {SHARED_DATASETS}"
)


def _model(max_seq_len: int = 128):
    cfg = preset_config(
        "transformer-tiny", vocab_size=259, dim=32, n_layers=1, n_heads=2, max_seq_len=max_seq_len
    )
    return build_model(cfg, seed=1).double()


def test_model_is_registered_under_nestlearn():
    assert get_model("nestlearn") is NestlearnLM


def test_rolling_windows_equal_lm_eval_windows():
    rng = random.Random(0)
    for _ in range(30):
        n, L = rng.randint(1, 60), rng.randint(2, 17)
        toks = [rng.randint(0, 9) for _ in range(n)]
        theirs = [
            tuple(map(list, make_disjoint_window(w)))
            for w in get_rolling_token_windows(toks, prefix_token=99, max_seq_len=L, context_len=1)
        ]
        assert [tuple(w) for w in rolling_windows(toks, 99, L)] == theirs


@needs_data
def test_prompt_helpers_equal_lm_eval_on_every_row():
    for row in TASKS["wikitext"].read(SHARED_DATASETS):
        assert wikitext_detokenize(row["page"]) == wikitext_detokenizer(row)
    for row in TASKS["winogrande"].read(SHARED_DATASETS):
        item = TASKS["winogrande"].to_item(row)
        assert [c for c, _ in item.requests] == lm_wino.doc_to_choice(row)
        assert item.requests[0][1] == " " + lm_wino.doc_to_target(row)
        assert item.gold == lm_wino.doc_to_text(row)


@needs_data
@pytest.mark.parametrize(
    "tasks,limit",
    [([t for t in TASKS if t != "wikitext"], 6), (["wikitext"], 1)],
    ids=["seven-tasks", "wikitext"],
)
def test_adapter_results_equal_native_scorer(tasks, limit):
    tok = get_tokenizer("byte")
    model = _model()
    native = evaluate_tasks(LMScorer(model, tok, batch_size=8), tasks, SHARED_DATASETS, limit=limit)
    theirs = evaluate_with_lm_eval(
        tasks, SHARED_DATASETS, model=model, tokenizer=tok, limit=limit, batch_size=8
    )
    for t in tasks:
        assert theirs[t]["n"] == native[t]["n"] == limit
        for metric in TASKS[t].metrics:
            assert theirs[t][metric] == pytest.approx(native[t][metric], rel=1e-9), (t, metric)


def test_adapter_requests_and_freeze_hook():
    tok = get_tokenizer("byte")
    model = _model(64)
    calls = []
    model.set_memory_updates = calls.append  # the hook a memory family defines
    lm = NestlearnLM(model=model, tokenizer=tok, batch_size="4", freeze_memory="true")
    assert calls == [False] and lm.max_length == 64 and lm.eot_token_id == tok.eos_id
    sc = LMScorer(model, tok, batch_size=4)
    reqs = [("Question: why?\nAnswer:", " because"), ("", "empty context"), ("x " * 50, "y")]
    inst = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)]
    for (a, ga), (b, gb) in zip(lm.loglikelihood(inst), sc.loglikelihood(reqs)):
        assert a == pytest.approx(b, abs=1e-10) and ga == gb
    text = "A document longer than one window. " * 4
    roll = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert roll[0] == pytest.approx(sc.loglikelihood_rolling([text])[0], abs=1e-9)
    gen = Instance("generate_until", {}, ("The ", {"until": ["\n"], "max_gen_toks": 5}), 0)
    assert lm.generate_until([gen]) == sc.generate_until([("The ", ["\n"], 5)])
    with torch.no_grad():
        assert len(lm.generate_until([gen])[0]) <= 5
