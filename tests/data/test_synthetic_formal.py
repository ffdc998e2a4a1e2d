"""Formal languages: samples and next-symbol labels checked against independent recognisers."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from nestlearn.data.synthetic.formal import (
    END,
    FORMAL_BINS,
    FORMAL_LANGUAGES,
    encode_formal,
    formal_strings,
    formal_vocab,
)


def _counter(s: str, letters: str) -> bool:
    m = re.fullmatch("".join(f"({c}+)" for c in letters), s)
    return bool(m) and len({len(g) for g in m.groups()}) == 1


def _shuffle2(s: str) -> bool:
    d1 = d2 = 0
    for c in s:
        d1 += (c == "(") - (c == ")")
        d2 += (c == "[") - (c == "]")
        if d1 < 0 or d2 < 0:
            return False
    return d1 == d2 == 0


# membership written independently of the generator: regular expressions and counters
RECOGNISERS = {
    "parity": lambda s: re.fullmatch(r"(0*10*1)*0*", s) is not None,
    "aa_star": lambda s: re.fullmatch(r"(aa)*", s) is not None,
    "abab_star": lambda s: re.fullmatch(r"(abab)*", s) is not None,
    "anbn": lambda s: _counter(s, "ab"),
    "anbncn": lambda s: _counter(s, "abc"),
    "shuffle2": _shuffle2,
}
# (enumerate strings up to this length, check members up to this length): every prefix of a
# checked member has its continuations, if any, among the enumerated strings
ENUM = {
    "parity": (10, 5),
    "aa_star": (12, 6),
    "abab_star": (16, 8),
    "anbn": (12, 10),
    "anbncn": (9, 6),
    "shuffle2": (8, 4),
}


@pytest.mark.parametrize("name", sorted(FORMAL_LANGUAGES))
def test_next_symbol_sets_match_brute_force(name):
    """Against every string up to a length: c may follow p iff some member starts with p + c."""
    lang, member = FORMAL_LANGUAGES[name], RECOGNISERS[name]
    n_max, check_max = ENUM[name]
    members = {
        "".join(w)
        for n in range(n_max + 1)
        for w in itertools.product(lang.alphabet, repeat=n)
        if member("".join(w))
    }
    prefixes = {m[:i] for m in members for i in range(len(m) + 1)}
    checked = 0
    for s in members:
        if len(s) > check_max:
            continue
        for i, got in enumerate(lang.next_sets(s)):
            p = s[:i]
            want = {c for c in lang.alphabet if p + c in prefixes}
            if p in members:
                want.add(END)
            assert got == want, (name, p, got, want)
            checked += 1
        assert lang.accepts(s)
    assert checked > 10
    for w in itertools.product(lang.alphabet, repeat=min(n_max, 7)):
        s = "".join(w)
        assert lang.accepts(s) == member(s), (name, s)


@pytest.mark.parametrize("name", sorted(FORMAL_LANGUAGES))
def test_samples_are_members_within_their_bins(name):
    lang, member = FORMAL_LANGUAGES[name], RECOGNISERS[name]
    for split in ("train", "bin0", "bin1"):
        lo, hi = FORMAL_BINS[name]["bin1" if split == "bin1" else "bin0"]
        strings = formal_strings(name, 200, split=split, seed=0)
        for s in strings:
            assert member(s), (name, split, s)
            size = len(s) // len(lang.alphabet) if lang.unit == "n" else len(s)
            assert lo <= size <= hi, (name, split, len(s))
        assert len(set(strings)) > 1
    assert formal_strings(name, 30, split="bin1", seed=3) == formal_strings(
        name, 30, split="bin1", seed=3
    )
    assert formal_strings(name, 30, split="train", seed=3) != formal_strings(
        name, 30, split="bin0", seed=3
    )


def test_shuffle2_samples_include_crossed_brackets():
    strings = formal_strings("shuffle2", 200, split="train")
    crossed = [s for s in strings if re.search(r"\([^()]*\[[^\[\]]*\)", s)]
    assert crossed, "expected interleavings such as ([)] that Dyck-2 forbids"


def test_encoding_pads_masks_and_labels():
    strings = ["aabb", "ab"]
    b = encode_formal("anbn", strings)
    v = formal_vocab("anbn")
    assert b.inputs.shape == (2, 5) and b.targets.shape == (2, 5, 3)
    assert b.inputs[0].tolist() == [v["<bos>"], 0, 0, 1, 1]
    assert b.inputs[1].tolist() == [v["<bos>"], 0, 1, v["<pad>"], v["<pad>"]]
    assert b.mask.tolist() == [[True] * 5, [True, True, True, False, False]]
    lang = FORMAL_LANGUAGES["anbn"]
    np.testing.assert_array_equal(b.targets[0], lang.labels("aabb"))
    # "ab": a (only a may start), after a: a or b, after ab: end
    np.testing.assert_array_equal(b.targets[1, :3], [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    assert (b.targets[1, 3:] == 0).all()
    with pytest.raises(ValueError, match="not in"):
        lang.next_sets("abc")
