"""RULER-style NIAH generator: exact lengths, needles really at their stated depths, answers right."""

from __future__ import annotations

import numpy as np
import pytest

from nestlearn.data import get_tokenizer
from nestlearn.data.synthetic.haystack import corpus_sentences, sentence_pool
from nestlearn.data.synthetic.niah import (
    NEEDLE,
    NIAH_TASKS,
    RULER_DEPTHS,
    generate_niah,
    niah_sample,
)

TOKENIZERS = ["byte", "bpe-8192"]


@pytest.fixture(scope="module", params=TOKENIZERS)
def tok(request):
    return get_tokenizer(request.param)


def _max_piece(tok) -> int:
    pool = sentence_pool(tok, "test")
    return max(len(p) for p in pool.ids)


@pytest.mark.parametrize("task", sorted(NIAH_TASKS))
def test_needles_answers_and_length(task, tok):
    spec = NIAH_TASKS[task]
    for s in generate_niah(task, tok, 2048, 4, seed=3):
        assert len(s.input_ids) + s.max_new_tokens == 2048
        assert s.prompt == tok.decode(s.input_ids)
        assert len(s.needles) == spec.num_keys * spec.num_values
        assert len(set(s.needle_values)) == len(s.needle_values)
        kind = spec.value_type
        for ins, key, value in zip(s.needles, s.needle_keys, s.needle_values):
            text = NEEDLE.format(kind=kind, key=key, value=value)
            assert ins.text == text
            # the needle is exactly where the sample says, in tokens and in characters
            assert tok.decode(s.input_ids[ins.token_start : ins.token_end]) == " " + text
            assert s.prompt[ins.char_start : ins.char_end] == " " + text
        # the answers are the values of the queried keys, and nothing else
        expect = [v for q in s.queries for k, v in zip(s.needle_keys, s.needle_values) if k == q]
        assert sorted(s.answers) == sorted(expect)
        assert len(s.answers) == spec.num_queries * spec.num_values
        # every queried key occurs in its needles and twice in the question + answer prefix,
        # so no distractor shares it (mk_niah_2/3 haystacks are made of other needles)
        for q in s.queries:
            n_needles = s.needle_keys.count(q)
            assert s.prompt.count(q) == n_needles + 2
        for a in s.answers:
            assert s.prompt.count(a) == 1
        question = s.prompt[s.prompt.rindex("\n") :]
        assert all(q in question for q in s.queries)
        assert question.rstrip().endswith("provided text is" if len(s.answers) == 1 else "text are")


def test_needle_lands_at_its_stated_depth(tok):
    """Inserted at the last sentence boundary at or before depth% of the haystack tokens."""
    depths = [0, 10, 25, 50, 75, 90, 100]
    piece = _max_piece(tok)
    for length in (1024, 8192):
        for s in generate_niah("s_niah_2", tok, length, len(depths), depths=depths, seed=1):
            ins = s.needles[0]
            start, end = s.meta["context_start"], s.meta["context_end"]
            hay = (end - start) - (ins.token_end - ins.token_start)
            before = ins.token_start - start
            target = ins.depth / 100 * hay
            assert before <= target + 1e-6 and target - before < piece
            assert ins.token_depth == pytest.approx(100 * before / hay)
        assert [x.depth for x in generate_niah("s_niah_1", tok, length, 9, depths=depths)] == [
            float(depths[i % len(depths)]) for i in range(9)
        ]


def test_ruler_depth_rule_and_multi_needle_order():
    tok = get_tokenizer("byte")
    for s in generate_niah("mv_niah", tok, 4096, 5, depths=None, seed=2):
        d = [n.depth for n in s.needles]
        assert d == sorted(d) and len(set(d)) == len(d)
        assert all(x in RULER_DEPTHS for x in d)
        assert [n.token_start for n in s.needles] == sorted(n.token_start for n in s.needles)


def test_deterministic_and_independent_of_batching():
    tok = get_tokenizer("byte")
    a = generate_niah("mq_niah", tok, 3000, 3, seed=5)
    b = generate_niah("mq_niah", tok, 3000, 3, seed=5)
    for x, y in zip(a, b):
        assert np.array_equal(x.input_ids, y.input_ids) and x.answers == y.answers
    alone = niah_sample("mq_niah", tok, 3000, 2, seed=5)
    assert np.array_equal(alone.input_ids, a[2].input_ids)
    later = generate_niah("mq_niah", tok, 3000, 2, seed=5, start=1)
    assert np.array_equal(later[1].input_ids, a[2].input_ids)
    other = generate_niah("mq_niah", tok, 3000, 3, seed=6)
    assert all(x.answers != y.answers for x, y in zip(a, other))


def test_lengths_from_1k_to_64k_and_100_samples_per_cell():
    tok = get_tokenizer("bpe-8192")
    for length in (1024, 65536):
        s = niah_sample("s_niah_3", tok, length, 0)
        assert len(s.input_ids) + 128 == length
    byte = get_tokenizer("byte")
    cell = generate_niah("s_niah_1", byte, 1024, 100)
    assert len(cell) == 100 and len({s.answers[0] for s in cell}) == 100


def test_haystack_is_held_out_text():
    tok = get_tokenizer("byte")
    s = niah_sample("s_niah_2", tok, 4096, 0, seed=0)
    ctx = tok.decode(s.input_ids[s.meta["context_start"] : s.needles[0].token_start])
    first = ctx.strip().split(". ")[0]
    test_text = " ".join(corpus_sentences("test"))
    assert len(first) > 20 and first in test_text
    assert s.haystack == "corpus:test"
    with pytest.raises(ValueError, match="training split"):
        generate_niah("s_niah_2", tok, 4096, 1, split="train")


def test_pass_key_haystack_is_ruler_noise():
    tok = get_tokenizer("byte")
    s = niah_sample("s_niah_1", tok, 2048, 0)
    assert s.prompt.count("The grass is green. The sky is blue.") > 10


def test_errors_name_the_fix():
    tok = get_tokenizer("byte")
    with pytest.raises(ValueError, match="use length >="):
        niah_sample("mk_niah_1", tok, 300, 0)
    with pytest.raises(ValueError, match="unknown NIAH task"):
        generate_niah("s_niah_9", tok, 2048, 1)
