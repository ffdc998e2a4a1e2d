"""Fictional facts: determinism, answers never in the questions, options well formed."""

from __future__ import annotations

import pytest

from nestlearn.data.synthetic.facts import fact_set


def test_deterministic():
    assert fact_set(1).corpus() == fact_set(1).corpus()
    assert [q.options for q in fact_set(1).questions] == [q.options for q in fact_set(1).questions]
    assert fact_set(2).corpus() != fact_set(1).corpus()


@pytest.mark.parametrize("seed", range(5))
def test_no_answer_leakage_and_answer_in_the_document(seed):
    f = fact_set(seed)
    docs = {d.person: d for d in f.documents}
    assert len(f.questions) == 3 * len(f.documents) == 30
    for q in f.questions:
        answer = q.options[q.answer]
        assert answer not in q.prompt()
        assert answer == docs[q.person].facts[q.attribute]
        assert answer in docs[q.person].text
        assert len(set(q.options)) == len(q.options) == 4
        # distractors are other people's values of the same attribute, so each is in the corpus
        others = {d.facts[q.attribute] for p, d in docs.items() if p != q.person}
        assert set(q.options) - {answer} <= others
    answers = [q.answer for q in f.questions]
    assert len(set(answers)) > 1  # the right option's position varies


def test_names_are_unique_and_invented():
    f = fact_set(0, n_entities=20)
    people = [d.person for d in f.documents]
    towns = [d.facts["town"] for d in f.documents]
    assert len(set(people)) == 20 and len(set(towns)) == 20
    assert not set(towns) & {p.split()[0] for p in people}


def test_bad_sizes():
    with pytest.raises(ValueError, match="n_entities"):
        fact_set(0, n_entities=3)
    with pytest.raises(ValueError, match="n_entities"):
        fact_set(0, n_entities=21)
    with pytest.raises(ValueError, match="n_options"):
        fact_set(0, n_entities=4, n_options=1)
