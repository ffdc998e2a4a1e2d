"""Constructed languages: determinism, held-out sentences disjoint from the examples, grammar."""

from __future__ import annotations

import pytest

from nestlearn.data.synthetic.conlang import NOUNS, VERBS, ctnl_task, make_language, render


def test_deterministic_in_seed_and_index():
    a, b = ctnl_task(3, 0), ctnl_task(3, 0)
    assert a.material_lines() == b.material_lines()
    assert [s.source for s in a.test] == [s.source for s in b.test]
    assert ctnl_task(4, 0).material_lines() != a.material_lines()
    assert ctnl_task(3, 1).material_lines() != a.material_lines()


@pytest.mark.parametrize("seed", range(5))
def test_held_out_sentences_are_not_in_the_context(seed):
    for index in (0, 1):
        t = ctnl_task(seed, index)
        material = "\n".join(t.material_lines())
        assert len(t.test) == 12 and len(t.parallel) == 16
        for s in t.test:
            assert s.source not in {p.source for p in t.parallel}
            assert s.english not in {p.english for p in t.parallel}
            assert f": {s.source}\n" not in material + "\n"
            assert f"English: {s.english}\n" not in material + "\n"
            # every word of a held-out sentence comes from the dictionary's roots
            roots = [w for w, _ in t.dictionary]
            assert all(any(tok.startswith(r) or r in tok for r in roots)
                       for tok in s.source.split())  # fmt: skip
            # the prompt holds the source and never the English
            assert s.english not in t.prompt(s) and s.source in t.prompt(s)


def test_the_two_languages_differ_in_order_words_and_suffixes():
    a, b = make_language(0, 0), make_language(0, 1)
    assert a.order.endswith("V") and b.order.startswith("V")
    assert not a.adj_after and b.adj_after
    assert a.object_case and not b.object_case
    assert not set(a.lexicon.values()) & set(b.lexicon.values())
    assert a.name != b.name and len({a.plural, a.past, a.present, a.object_case}) == 4


def test_rendering_follows_the_grammar():
    lang = make_language(0, 0)
    nouns = [n for n, _ in NOUNS if n in lang.lexicon]
    verb = next(v for _, v, _ in VERBS if v in lang.lexicon)
    noun, other = nouns[:2]
    s = render(lang, (noun, True, None, verb, True, other, False, None))
    parts = {
        "S": lang.lexicon[noun] + lang.plural,
        "O": lang.lexicon[other] + lang.object_case,
        "V": lang.lexicon[verb] + lang.past,
    }
    assert s.source.split() == [parts[c] for c in lang.order]
    assert (
        s.english
        == f"the {dict(NOUNS)[noun]} {dict((t[1], t[2]) for t in VERBS)[verb]} the {other}"
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="index"):
        make_language(0, 2)
    with pytest.raises(ValueError, match="n_nouns"):
        make_language(0, 0, n_nouns=0)
    with pytest.raises(ValueError, match="repeat"):
        ctnl_task(0, 0, n_parallel=500, n_test=10, n_nouns=2, n_verbs=1, n_adjectives=1)
