"""The token-level S-NIAH analogue: exact lengths, needles where stated, no answer leakage."""

from __future__ import annotations

import numpy as np
import pytest

from nestlearn.data.synthetic.common import IGNORE_INDEX
from nestlearn.data.synthetic.haystack import NOISE_UNIT
from nestlearn.data.synthetic.sniah import (
    SNIAH_TASKS,
    TEST_DEPTHS,
    VALUE_TOKENS,
    decode,
    haystack_pieces,
    sniah_batches,
    sniah_sample,
    sniah_segment,
    sniah_vocab,
    value_pieces,
    words_of,
)

VOCAB = sniah_vocab()
VALUE_IDS = {VOCAB[t] for t in VALUE_TOKENS}


@pytest.mark.parametrize("task", sorted(SNIAH_TASKS))
def test_samples_are_deterministic_and_exact_length(task):
    a = sniah_sample(task, 300, 5, seed=1)
    b = sniah_sample(task, 300, 5, seed=1)
    assert np.array_equal(a.ids, b.ids) and a.value == b.value and len(a.ids) == 301
    assert not np.array_equal(a.ids, sniah_sample(task, 300, 6, seed=1).ids)
    assert not np.array_equal(a.ids, sniah_sample(task, 300, 5, seed=2).ids)
    assert a.ids.min() >= 0 and a.ids.max() < len(VOCAB)


@pytest.mark.parametrize("task", sorted(SNIAH_TASKS))
def test_needle_and_question_hold_the_key_and_value(task):
    spec = SNIAH_TASKS[task]
    s = sniah_sample(task, 400, 3)
    words = decode(s.ids).split()
    n = spec.value_tokens
    key = [f"adj:{s.key[0]}", f"noun:{s.key[1]}"]
    value = value_pieces(s.value, spec.value_base)
    assert value == s.value_tokens and len(value) == n
    assert words[0] == "<bos>"
    assert words[s.needle_start : s.needle_start + 5 + n] == [
        "<needle>",
        *key,
        "<is>",
        *value,
        "<end>",
    ]
    assert words[-(4 + n) :] == ["<query>", *key, "<is>", *value]
    assert s.answer_start == len(s.ids) - n
    assert len(s.value) == spec.value_digits
    assert "".join(t[1:] for t in value) == s.value
    assert len(set(s.value)) == len(s.value)  # distinct digits (module docstring)
    if spec.value_base == 10:
        assert s.value[0] != "0" and s.value.isdigit()
    # value symbols occur only in the needle and the answer: nothing else gives them away
    where = np.flatnonzero(np.isin(s.ids, list(VALUE_IDS)))
    assert where.tolist() == [
        *range(s.needle_start + 4, s.needle_start + 4 + n),
        *range(s.answer_start, len(s.ids)),
    ]
    # one needle, one question
    assert words.count("<needle>") == 1 and words.count("<query>") == 1


def test_depth_is_reached_within_a_sentence():
    for i in range(len(TEST_DEPTHS)):
        s = sniah_sample("s_niah_1", 1024, i)
        hay = len(s.ids) - 1 - (5 + 7) - (4 + 7)  # minus <bos>, needle, question
        reached = 100.0 * (s.needle_start - 1) / hay
        assert s.depth == TEST_DEPTHS[i]
        assert s.depth - 100.0 * 5 / hay <= reached <= s.depth + 1e-9  # noise sentences: 5 words


def _occurs(run: np.ndarray, source: str) -> bool:
    """Whether the ids ``run`` occur contiguously in the haystack source (wrapping ignored)."""
    stream = np.concatenate(haystack_pieces(source)).astype(np.int64).tobytes()
    at = stream.find(run.astype(np.int64).tobytes())
    while at >= 0 and at % 8:
        at = stream.find(run.astype(np.int64).tobytes(), at + 1)
    return at >= 0


def test_haystacks_come_from_the_named_source():
    noise = " ".join(words_of(NOISE_UNIT))
    assert noise in decode(sniah_sample("s_niah_1", 200, 0).ids)
    # test essays come from the test split, training essays from the validation split; the
    # 20 words after the needle are one contiguous run of the source
    s2 = sniah_sample("s_niah_2", 200, 4, depth=0.0)
    after = s2.needle_start + 5 + 7
    assert _occurs(s2.ids[after : after + 20], "test")
    assert not _occurs(s2.ids[after : after + 20], "validation")
    x, _ = next(sniah_batches("s_niah_2", 200, 1))
    t = sniah_sample("s_niah_2", 200, 0, split="validation")
    assert np.array_equal(x[0], t.ids[:-1])
    before = t.ids[1 : t.needle_start]
    after = t.ids[t.needle_start + 5 + 7 : len(t.ids) - (4 + 7)]
    run = max(before, after, key=len)[:15]
    assert len(run) == 15 and _occurs(run, "validation")
    with pytest.raises(ValueError, match="training split"):
        haystack_pieces("train")


def test_segment_scores_only_the_answer():
    seg = sniah_segment("s_niah_3", 256, 6, split="test")
    n = SNIAH_TASKS["s_niah_3"].value_tokens
    assert seg.inputs.shape == seg.targets.shape == (6, 256)
    scored = seg.targets != IGNORE_INDEX
    assert (scored.sum(1) == n).all() and scored[:, -n:].all()
    full = [sniah_sample("s_niah_3", 256, i).ids for i in range(6)]
    for row, ids in enumerate(full):
        assert np.array_equal(seg.inputs[row], ids[:-1])
        assert np.array_equal(seg.targets[row, -n:], ids[-n:])
    assert seg.meta["depths"] == [TEST_DEPTHS[i] for i in range(6)]


def test_training_batches_are_fresh_and_not_test_samples():
    it = sniah_batches("s_niah_1", 128, 4, seed=0)
    (x0, y0), (x1, _) = next(it), next(it)
    assert x0.shape == y0.shape == (4, 128)
    assert not np.array_equal(x0, x1)
    test = sniah_segment("s_niah_1", 128, 4, split="test")
    assert not any(np.array_equal(a, b) for a in x0 for b in test.inputs)


def test_values_are_one_token_per_digit():
    assert value_pieces("1234567", 10) == ["#1", "#2", "#3", "#4", "#5", "#6", "#7"]
    assert value_pieces("0a3f", 16) == ["#0", "#a", "#3", "#f"]
    assert len(set(VALUE_TOKENS)) == 16 and all(t in VOCAB for t in VALUE_TOKENS)
    with pytest.raises(ValueError, match="base-10"):
        value_pieces("12a", 10)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown S-NIAH task"):
        sniah_sample("s_niah_9", 100, 0)
    with pytest.raises(ValueError, match="length >= 64"):
        sniah_sample("s_niah_3", 20, 0)
