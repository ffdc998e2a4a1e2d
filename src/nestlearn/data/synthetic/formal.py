"""Formal-language recognition (the Nested Learning paper's Table 5, arXiv 2512.24695 sec. 9.5).

The paper follows Irie et al. 2023 ("Practical Computational Power of Linear Transformers and
Their Recurrent and Self-Referential Extensions", EMNLP), who use the tasks, data splits and
Bin0/Bin1 protocol of Bhattamishra et al. 2020 ("On the Ability and Limitations of Transformers to
Recognize Formal Languages", EMNLP; github.com/satwik77/Transformer-Formal-Languages). Six
languages: Parity, (aa)*, (abab)*, aⁿbⁿ, aⁿbⁿcⁿ and Shuffle-2.

Task (the character-prediction formulation of Gers & Schmidhuber 2001 that Bhattamishra et al.
use): after each prefix, predict the set of symbols that may come next, with ``T`` (end) in the
set when the prefix itself is in the language. A string counts as recognised when every
position's predicted set is exactly right; accuracy is the fraction of test strings recognised.
Labels here cover prefixes of length 0 .. L (a BOS token makes position 0 predict the first
symbol). Bhattamishra et al. keep only the membership bit for Parity, (aa)* and (abab)* (the
other symbols are always allowed, or fixed by the previous one) and have no ``T`` for
Shuffle-2; the full set used here contains those bits, so recognising a string here implies
recognising it there.

Lengths (:data:`FORMAL_BINS`): training and Bin0 strings have length 2-50 (``n`` 1-50 for aⁿbⁿ
and aⁿbⁿcⁿ), Bin1 strings 51-100 (``n`` 51-100); Shuffle-2's Bin1 is 52-100, all as in
Bhattamishra et al.'s data generator. Test sets are i.i.d. draws (not deduplicated: (aa)* has
only 25 distinct strings per bin). Shuffle-2 strings are random interleavings of two Dyck-1 words
over ``()`` and ``[]`` (Bhattamishra et al. sample only well-nested Dyck-2 words, a subset).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nestlearn.data.synthetic.common import make_rng

END = "T"
"""The end symbol of the output sets."""


def _parity_sets(s: str) -> list[set[str]]:
    out, ones = [], 0
    for i in range(len(s) + 1):
        if i:
            ones += s[i - 1] == "1"
        out.append({"0", "1"} | ({END} if ones % 2 == 0 else set()))
    return out


def _aa_sets(s: str) -> list[set[str]]:
    return [{"a"} | ({END} if i % 2 == 0 else set()) for i in range(len(s) + 1)]


def _abab_sets(s: str) -> list[set[str]]:
    return [{"ab"[i % 2]} | ({END} if i % 4 == 0 else set()) for i in range(len(s) + 1)]


def _counter_sets(s: str, letters: str) -> list[set[str]]:
    """aⁿbⁿ / aⁿbⁿcⁿ with n >= 1: a's (then b may start), then exactly n of each later letter.

    Exact for every prefix of a member; at the first symbol where a non-member deviates the set
    is still that of a valid prefix, which is all :meth:`FormalLanguage.accepts` needs.
    """
    out: list[set[str]] = []
    for i in range(len(s) + 1):
        prefix = s[:i]
        n = len(prefix) - len(prefix.lstrip(letters[0]))  # leading a's
        if n == len(prefix):  # still reading a's: another a, or b once there is one
            out.append({letters[0]} | ({letters[1]} if n >= 1 else set()))
            continue
        after = len(prefix) - n  # symbols after the a's
        if after >= n * (len(letters) - 1):
            out.append({END})
        else:
            out.append({letters[1 + after // n]})
    return out


def _shuffle2_sets(s: str) -> list[set[str]]:
    out, d1, d2 = [], 0, 0
    for i in range(len(s) + 1):
        if i:
            c = s[i - 1]
            d1 += (c == "(") - (c == ")")
            d2 += (c == "[") - (c == "]")
        cur = {"(", "["}
        if d1 > 0:
            cur.add(")")
        if d2 > 0:
            cur.add("]")
        if d1 == 0 and d2 == 0:
            cur.add(END)
        out.append(cur)
    return out


def _sample_parity(rng: np.random.Generator, lo: int, hi: int) -> str:
    n = int(rng.integers(lo, hi + 1))
    bits = rng.integers(0, 2, size=n)
    if bits.sum() % 2:
        bits[-1] ^= 1  # flip the last bit: even number of ones, length kept
    return "".join(map(str, bits))


def _sample_repeat(unit: str) -> Callable[[np.random.Generator, int, int], str]:
    def sample(rng: np.random.Generator, lo: int, hi: int) -> str:
        k = len(unit)
        m_lo, m_hi = -(-lo // k), hi // k
        if m_lo > m_hi:
            raise ValueError(f"no string of ({unit})* has a length in [{lo}, {hi}]")
        return unit * int(rng.integers(m_lo, m_hi + 1))

    return sample


def _sample_counter(letters: str) -> Callable[[np.random.Generator, int, int], str]:
    def sample(rng: np.random.Generator, lo: int, hi: int) -> str:
        n = int(rng.integers(max(lo, 1), hi + 1))
        return "".join(c * n for c in letters)

    return sample


def _dyck1(rng: np.random.Generator, pairs: int, open_c: str, close_c: str) -> list[str]:
    out, depth, opened = [], 0, 0
    for _ in range(2 * pairs):
        if opened < pairs and (depth == 0 or rng.random() < 0.5):
            out.append(open_c)
            depth += 1
            opened += 1
        else:
            out.append(close_c)
            depth -= 1
    return out


def _sample_shuffle2(rng: np.random.Generator, lo: int, hi: int) -> str:
    lo_even = lo + (lo % 2)
    if lo_even > hi:
        raise ValueError(f"Shuffle-2 strings have even length; none in [{lo}, {hi}]")
    n = int(rng.choice(np.arange(lo_even, hi + 1, 2)))
    a = int(rng.integers(0, n // 2 + 1))
    w1 = _dyck1(rng, a, "(", ")")
    w2 = _dyck1(rng, n // 2 - a, "[", "]")
    take_first = np.zeros(n, dtype=bool)
    take_first[rng.permutation(n)[: len(w1)]] = True
    it1, it2 = iter(w1), iter(w2)
    return "".join(next(it1) if f else next(it2) for f in take_first)


@dataclass(frozen=True)
class FormalLanguage:
    """A language of Table 5: its alphabet, a sampler and the next-symbol sets of a string.

    ``sample(rng, lo, hi)`` draws a member whose length (or ``n``, when ``unit == "n"``) lies in
    ``[lo, hi]``; ``next_sets(s)`` gives ``[len(s) + 1]`` sets (prefix lengths 0..len(s)).
    """

    name: str
    title: str
    alphabet: str
    unit: str
    sampler: Callable[[np.random.Generator, int, int], str]
    sets_fn: Callable[[str], list[set[str]]]

    @property
    def outputs(self) -> str:
        """Output symbols, in the order of the label vector: the alphabet then ``T``."""
        return self.alphabet + END

    def sample(self, rng: np.random.Generator, lo: int, hi: int) -> str:
        return self.sampler(rng, lo, hi)

    def next_sets(self, s: str) -> list[set[str]]:
        bad = set(s) - set(self.alphabet)
        if bad:
            raise ValueError(f"{self.name}: symbols {sorted(bad)} are not in {self.alphabet!r}")
        return self.sets_fn(s)

    def labels(self, s: str) -> np.ndarray:
        """``[len(s) + 1, len(outputs)]`` 0/1 label matrix of :meth:`next_sets`."""
        sets = self.next_sets(s)
        return np.array([[c in st for c in self.outputs] for st in sets], dtype=np.float32)

    def accepts(self, s: str) -> bool:
        """Whether ``s`` is in the language (``T`` allowed after the whole string and every
        symbol allowed where it occurs)."""
        sets = self.next_sets(s)
        return END in sets[-1] and all(c in sets[i] for i, c in enumerate(s))


FORMAL_LANGUAGES: dict[str, FormalLanguage] = {
    lang.name: lang
    for lang in (
        FormalLanguage("parity", "Parity", "01", "length", _sample_parity, _parity_sets),
        FormalLanguage("aa_star", "(aa)*", "a", "length", _sample_repeat("aa"), _aa_sets),
        FormalLanguage("abab_star", "(abab)*", "ab", "length", _sample_repeat("abab"), _abab_sets),
        FormalLanguage(
            "anbn", "aⁿbⁿ", "ab", "n", _sample_counter("ab"), lambda s: _counter_sets(s, "ab")
        ),
        FormalLanguage(
            "anbncn",
            "aⁿbⁿcⁿ",
            "abc",
            "n",
            _sample_counter("abc"),
            lambda s: _counter_sets(s, "abc"),
        ),
        FormalLanguage("shuffle2", "Shuffle-2", "()[]", "length", _sample_shuffle2, _shuffle2_sets),
    )
}
"""The six languages of Table 5 by name."""

FORMAL_BINS: dict[str, dict[str, tuple[int, int]]] = {
    "parity": {"bin0": (2, 50), "bin1": (51, 100)},
    "aa_star": {"bin0": (2, 50), "bin1": (51, 100)},
    "abab_star": {"bin0": (2, 50), "bin1": (51, 100)},
    "anbn": {"bin0": (1, 50), "bin1": (51, 100)},
    "anbncn": {"bin0": (1, 50), "bin1": (51, 100)},
    "shuffle2": {"bin0": (2, 50), "bin1": (52, 100)},
}
"""Training/Bin0 and Bin1 ranges (lengths, or ``n`` for aⁿbⁿ and aⁿbⁿcⁿ)."""


def formal_strings(
    language: str, num: int, *, split: str, seed: int = 0, bounds: tuple[int, int] | None = None
) -> list[str]:
    """``num`` strings of ``language`` for ``split``: ``train``, ``bin0``, ``bin1``, or the
    validation draws ``valid_bin0`` / ``valid_bin1`` (model selection and early stopping).

    ``train``, ``bin0`` and ``valid_bin0`` share the training range (``bin1`` and
    ``valid_bin1`` the longer one) but not their random streams.
    """
    lang = _get(language)
    key = {"train": "bin0", "valid_bin0": "bin0", "valid_bin1": "bin1"}.get(split, split)
    if key not in FORMAL_BINS[lang.name] and bounds is None:
        raise ValueError(
            f"split must be train, bin0, bin1, valid_bin0 or valid_bin1, got {split!r}"
        )
    lo, hi = bounds or FORMAL_BINS[lang.name][key]
    rng = make_rng(seed, "formal", lang.name, split)
    return [lang.sample(rng, lo, hi) for _ in range(num)]


@dataclass
class FormalBatch:
    """Encoded strings of one language.

    Attributes:
        inputs: ``[N, L + 1]`` int64; BOS then the symbols (ids ``0..A-1``), PAD after the end.
        targets: ``[N, L + 1, A + 1]`` float32 next-symbol sets (alphabet then ``T``).
        mask: ``[N, L + 1]`` bool, True on real positions (BOS and symbols).
        strings: the strings, in order.
    """

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    strings: list[str]


def formal_vocab(language: str) -> dict[str, int]:
    """Input ids: the alphabet, then ``<bos>`` and ``<pad>``."""
    lang = _get(language)
    ids = {c: i for i, c in enumerate(lang.alphabet)}
    ids["<bos>"], ids["<pad>"] = len(ids), len(ids) + 1
    return ids


def encode_formal(language: str, strings: list[str]) -> FormalBatch:
    """Pad and encode ``strings`` of ``language`` with their label sets."""
    lang = _get(language)
    vocab = formal_vocab(language)
    width = max(len(s) for s in strings) + 1
    k = len(lang.outputs)
    inputs = np.full((len(strings), width), vocab["<pad>"], dtype=np.int64)
    targets = np.zeros((len(strings), width, k), dtype=np.float32)
    mask = np.zeros((len(strings), width), dtype=bool)
    for n, s in enumerate(strings):
        inputs[n, 0] = vocab["<bos>"]
        inputs[n, 1 : len(s) + 1] = [vocab[c] for c in s]
        targets[n, : len(s) + 1] = lang.labels(s)
        mask[n, : len(s) + 1] = True
    return FormalBatch(inputs, targets, mask, list(strings))


def _get(language: str) -> FormalLanguage:
    if language not in FORMAL_LANGUAGES:
        raise ValueError(
            f"unknown formal language {language!r}; choose from {', '.join(FORMAL_LANGUAGES)}"
        )
    return FORMAL_LANGUAGES[language]
