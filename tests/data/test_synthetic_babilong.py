"""BABILong-style generator: bAbI parsing, facts woven in order, answers from the source files."""

from __future__ import annotations

import numpy as np
import pytest

from nestlearn.data import get_tokenizer
from nestlearn.data.synthetic.babilong import (
    BABI_TASKS,
    babilong_sample,
    find_babi_dir,
    generate_babilong,
    load_babi,
    parse_babi,
)

from ..conftest import SHARED_DATASETS

BABI = SHARED_DATASETS / "babi"
needs_babi = pytest.mark.skipif(not BABI.is_dir(), reason="../shared/datasets/babi not present")

STORY = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Mary travelled to the office.
6 Where is Mary? \toffice\t5
1 Sandra got the milk there.
2 Sandra went to the garden.
3 Where is the milk?\tgarden\t1 2
"""


def test_parse_babi_maps_facts_and_supporting_lines():
    qs = parse_babi(STORY, "qa1")
    assert [q.answer for q in qs] == ["bathroom", "office", "garden"]
    assert qs[1].facts == (
        "Mary moved to the bathroom.",
        "John went to the hallway.",
        "Daniel went back to the hallway.",
        "Mary travelled to the office.",
    )
    assert qs[1].facts[qs[1].supporting[0]] == "Mary travelled to the office."
    assert qs[2].story == 1 and qs[2].facts == (
        "Sandra got the milk there.",
        "Sandra went to the garden.",
    )
    assert qs[2].supporting == (0, 1) and qs[2].question == "Where is the milk?"


@needs_babi
@pytest.mark.parametrize("task", sorted(BABI_TASKS))
def test_questions_and_answers_match_the_source_file(task):
    folder = find_babi_dir(BABI)
    qs = load_babi(task, BABI)
    assert len(qs) == 1000
    # an independent read of the file: every TAB line is "id question\tanswer\tids"
    path = next(folder.glob(f"{BABI_TASKS[task]}_test.txt"))
    lines = [ln for ln in path.read_text().splitlines() if "\t" in ln]
    for q, ln in zip(qs, lines):
        text, answer, _ = ln.split("\t")
        assert q.question == text.split(" ", 1)[1].strip()
        assert q.answer == answer.strip()
        assert all(0 <= i < len(q.facts) for i in q.supporting)


@needs_babi
def test_facts_are_woven_in_order_with_the_question_last():
    tok = get_tokenizer("byte")
    for s in generate_babilong("qa2", tok, 4096, 5, babi_dir=BABI, seed=1):
        q = load_babi("qa2", BABI)[(s.index + s.meta["skipped"]) % 1000]
        assert len(s.input_ids) + s.max_new_tokens == 4096
        assert [f.text for f in s.facts] == list(q.facts)
        assert s.answer == q.answer and s.supporting == q.supporting
        starts = [f.token_start for f in s.facts]
        assert starts == sorted(starts)
        for f in s.facts:
            assert s.prompt[f.char_start : f.char_end] == " " + f.text
            assert tok.decode(s.input_ids[f.token_start : f.token_end]) == " " + f.text
        assert s.prompt.endswith(f"Question: {q.question}\nAnswer:")
        # the facts are spread through the haystack, not bunched at one end
        assert s.facts[-1].token_depth - s.facts[0].token_depth > 10


@needs_babi
def test_length_zero_is_facts_only_and_sampling_is_deterministic():
    tok = get_tokenizer("byte")
    s = babilong_sample("qa1", tok, 0, 7, babi_dir=BABI)
    q = load_babi("qa1", BABI)[7]
    body = s.prompt.split("<context>\n", 1)[1].split("\n</context>")[0]
    assert body == "".join(" " + f for f in q.facts)
    a = generate_babilong("qa5", tok, 2048, 3, babi_dir=BABI, seed=4)
    b = generate_babilong("qa5", tok, 2048, 3, babi_dir=BABI, seed=4)
    c = generate_babilong("qa5", tok, 2048, 3, babi_dir=BABI, seed=5)
    assert all(np.array_equal(x.input_ids, y.input_ids) for x, y in zip(a, b))
    assert any(not np.array_equal(x.input_ids, y.input_ids) for x, y in zip(a, c))


@needs_babi
def test_long_stories_are_skipped_or_refused():
    tok = get_tokenizer("byte")
    longest = max(range(1000), key=lambda i: len(load_babi("qa3", BABI)[i].facts))
    s = babilong_sample("qa3", tok, 1024, longest, babi_dir=BABI)
    assert s.meta["skipped"] > 0 and len(s.input_ids) + s.max_new_tokens == 1024
    with pytest.raises(ValueError, match="too short"):
        babilong_sample("qa3", tok, 1024, longest, babi_dir=BABI, skip_long=False)


def test_missing_data_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("NESTLEARN_BABI_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="NESTLEARN_BABI_DIR"):
        find_babi_dir(tmp_path)
