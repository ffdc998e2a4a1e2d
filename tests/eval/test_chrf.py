"""chrF against hand-computed cases and, where installed, sacrebleu."""

from __future__ import annotations

import pytest

from nestlearn.eval.chrf import chrf, chrf_statistics, corpus_chrf, f_from_statistics


def test_identical_and_disjoint():
    assert chrf("the dog sees the cat", "the dog sees the cat") == pytest.approx(100.0)
    assert chrf("xyz", "abc") == 0.0
    assert chrf("", "abc") == 0.0 and chrf("abc", "") == 0.0


def test_prefix_by_hand():
    # n=1: P 2/2, R 2/3; n=2: P 1/1, R 1/2; n>=3: the hypothesis has none (order not counted)
    # P = 1, R = 7/12, F2 = 5 P R / (4 P + R) = 7/11
    assert chrf_statistics("ab", "abc", 3) == [2, 3, 2, 1, 2, 1, 0, 1, 0]
    assert chrf("ab", "abc") == pytest.approx(100 * 7 / 11)


def test_repeated_ngrams_are_clipped():
    # n=1: hyp 3, ref 1, match 1 -> P 1/3, R 1; n=2: the reference has none
    assert chrf("aaa", "a") == pytest.approx(100 * 5 / 7)


def test_whitespace_is_ignored_and_beta_weighs_recall():
    assert chrf("a b", "ab") == pytest.approx(100.0)
    # P = 1, R = 7/12: beta 1 gives the harmonic mean 2 P R / (P + R) = 14/19
    assert chrf("ab", "abc", beta=1.0) == pytest.approx(100 * 14 / 19)


def test_corpus_sums_statistics_before_the_f_score():
    # n=1: 5/5, 5/6; n=2: 3/3, 3/4; n=3: 1/1, 1/2 -> P 1, R 25/36 -> F2 = 125/169
    got = corpus_chrf(["ab", "abc"], ["abc", "abc"])
    assert got == pytest.approx(100 * 125 / 169)
    mean_of_sentences = (chrf("ab", "abc") + chrf("abc", "abc")) / 2
    assert abs(got - mean_of_sentences) > 5


def test_bad_inputs():
    with pytest.raises(ValueError, match="one reference per hypothesis"):
        corpus_chrf(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="sequences of sentences"):
        corpus_chrf("a", "a")
    with pytest.raises(ValueError, match="triples"):
        f_from_statistics([1, 2])
    with pytest.raises(ValueError, match="char_order"):
        chrf_statistics("a", "a", 0)


def test_agrees_with_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps = ["the dog saw the cats", "a big horse", "the old king helps the farmer", "wolves"]
    refs = ["the dogs saw the cat", "the big horse eats", "the old kings help the farmer", "x"]
    metric = sacrebleu.metrics.CHRF()
    for h, r in zip(hyps, refs):
        assert chrf(h, r) == pytest.approx(metric.sentence_score(h, [r]).score, abs=1e-9)
    assert corpus_chrf(hyps, refs) == pytest.approx(metric.corpus_score(hyps, [refs]).score)
