"""Constructed languages for continual translation of a novel language (CTNL analogue).

The paper's CTNL (arXiv 2512.24695 §9.1, Fig. 8) gives a model the grammar, a dictionary and
parallel sentences of a language it has never seen (MTOB's Kalamang, then Manchu) in context and
asks it to translate held-out sentences into English. Here the languages are generated from a
seed, so no model can have seen them:

* a **vocabulary**: one invented word per English lemma (8 nouns, 5 verbs, 4 adjectives by
  default, drawn from the lists below), built from the language's own sound inventory, so the
  two languages of a seed look different (``kotamu`` against ``zebiv``);
* a **word order**: language A puts the verb last (SOV or OSV), language B first (VSO or VOS);
* **morphology**: a plural suffix on nouns, past and present suffixes on verbs, and in the
  verb-final language an object-case suffix; adjectives precede the noun in A and follow it in B.

A :class:`CTNLTask` holds the language, its grammar notes and dictionary, ``n_parallel``
example pairs for the context and ``n_test`` held-out pairs. Every sentence is
``the [adj] noun verb the [adj] noun`` in English; held-out sentences differ from every example
in both languages (tested), and every word they use is in the dictionary. Deterministic in
``(seed, index)``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from nestlearn.data.synthetic.common import make_rng

__all__ = [
    "ADJECTIVES",
    "NOUNS",
    "VERBS",
    "CTNLTask",
    "Language",
    "Sentence",
    "ctnl_task",
    "make_language",
]

NOUNS: tuple[tuple[str, str], ...] = (
    ("dog", "dogs"), ("cat", "cats"), ("bird", "birds"), ("horse", "horses"),
    ("farmer", "farmers"), ("child", "children"), ("woman", "women"), ("man", "men"),
    ("king", "kings"), ("boat", "boats"), ("tree", "trees"), ("river", "rivers"),
    ("house", "houses"), ("apple", "apples"), ("stone", "stones"), ("wolf", "wolves"),
    ("friend", "friends"), ("teacher", "teachers"), ("goat", "goats"), ("fox", "foxes"),
)  # fmt: skip
"""``(singular, plural)``."""

VERBS: tuple[tuple[str, str, str], ...] = (
    ("sees", "see", "saw"), ("eats", "eat", "ate"), ("finds", "find", "found"),
    ("carries", "carry", "carried"), ("likes", "like", "liked"), ("follows", "follow", "followed"),
    ("builds", "build", "built"), ("washes", "wash", "washed"), ("hears", "hear", "heard"),
    ("calls", "call", "called"), ("pushes", "push", "pushed"), ("helps", "help", "helped"),
)  # fmt: skip
"""``(present 3rd singular, present plural, past)``; the dictionary uses the plural form."""

ADJECTIVES: tuple[str, ...] = (
    "big", "small", "old", "young", "red", "white", "happy", "quiet", "tall", "brave",
)  # fmt: skip

# two disjoint-looking sound inventories: language 0 and language 1 of a seed
_SOUNDS = (
    ("k t m n r s l p", "a o u"),
    ("b d g v z h j", "e i y"),
)
_ORDERS = (("SOV", "OSV"), ("VSO", "VOS"))
_ORDER_TEXT = {"S": "subject", "O": "object", "V": "verb"}


@dataclass(frozen=True)
class Language:
    """One constructed language: lexicon, word order and suffixes."""

    name: str
    lexicon: dict[str, str]
    """English lemma (noun singular, verb plural form, adjective) -> invented root."""
    order: str
    """Constituent order, e.g. ``"SOV"``."""
    adj_after: bool
    """Adjectives follow the noun (else they precede it)."""
    plural: str
    past: str
    present: str
    object_case: str
    """Suffix on the object noun (``""``: none)."""

    def grammar(self) -> str:
        """The grammar notes given in context."""
        order = ", ".join(_ORDER_TEXT[c] for c in self.order)
        lines = [
            f"Word order: {order}.",
            "Adjectives come " + ("after" if self.adj_after else "before") + " the noun.",
            f"Plural nouns end in -{self.plural}.",
            f"Verbs end in -{self.past} in the past tense and in -{self.present} in the present "
            "tense.",
        ]
        if self.object_case:
            lines.append(f"The object noun ends in -{self.object_case}.")
        lines.append("There are no words for 'the'.")
        return " ".join(lines)


@dataclass(frozen=True)
class Sentence:
    """One sentence in both languages, with what it was built from."""

    source: str
    english: str
    spec: tuple = field(compare=False)
    """``(subject, plural, adjective, verb, past, object, plural, adjective)``."""


@dataclass(frozen=True)
class CTNLTask:
    """A language with its context material and held-out sentences."""

    language: Language
    dictionary: list[tuple[str, str]]
    """``(invented word, English)`` pairs, nouns, then verbs, then adjectives."""
    parallel: list[Sentence]
    test: list[Sentence]

    def material_lines(self) -> list[str]:
        """The context, one line per item: header, grammar, dictionary, examples."""
        lang = self.language.name
        lines = [f"The {lang} language.", "Grammar: " + self.language.grammar(), "Dictionary:"]
        lines += [f"{w} = {e}" for w, e in self.dictionary]
        lines.append("Examples:")
        for s in self.parallel:
            lines += [f"{lang}: {s.source}", f"English: {s.english}"]
        return lines

    def prompt(self, s: Sentence) -> str:
        """The translation prompt; the answer is ``" " + s.english`` up to a newline."""
        return f"{self.language.name}: {s.source}\nEnglish:"


def _words(rng: np.random.Generator, sounds: tuple[str, str], n: int, taken: set[str]) -> list[str]:
    cons, vows = sounds[0].split(), sounds[1].split()
    out: list[str] = []
    while len(out) < n:
        syl = int(rng.integers(2, 4))
        w = "".join(str(rng.choice(cons)) + str(rng.choice(vows)) for _ in range(syl))
        if rng.random() < 0.3:
            w += str(rng.choice(cons))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def make_language(
    seed: int, index: int, *, n_nouns: int = 8, n_verbs: int = 5, n_adjectives: int = 4
) -> Language:
    """Language ``index`` (0: verb-final, 1: verb-initial) of ``seed``."""
    if index not in (0, 1):
        raise ValueError(f"index must be 0 (language A) or 1 (language B), got {index}")
    for what, n, most in (("n_nouns", n_nouns, len(NOUNS)), ("n_verbs", n_verbs, len(VERBS)),
                          ("n_adjectives", n_adjectives, len(ADJECTIVES))):  # fmt: skip
        if not 1 <= n <= most:
            raise ValueError(f"{what} must be in 1..{most}, got {n}")
    rng = make_rng(seed, "conlang", index)
    sounds = _SOUNDS[index]
    taken = {w for pair in NOUNS for w in pair} | {w for t in VERBS for w in t} | set(ADJECTIVES)
    nouns = [NOUNS[i][0] for i in rng.choice(len(NOUNS), n_nouns, replace=False)]
    verbs = [VERBS[i][1] for i in rng.choice(len(VERBS), n_verbs, replace=False)]
    adjs = [ADJECTIVES[i] for i in rng.choice(len(ADJECTIVES), n_adjectives, replace=False)]
    roots = _words(rng, sounds, len(nouns) + len(verbs) + len(adjs) + 1, taken)
    name = roots.pop().capitalize() + ("ish" if index == 0 else "ese")
    lexicon = dict(zip(nouns + verbs + adjs, roots))
    cons, vows = sounds[0].split(), sounds[1].split()
    sfx = set()
    while len(sfx) < 4:  # four distinct suffixes: vowel + consonant, or consonant + vowel
        a, b = str(rng.choice(cons)), str(rng.choice(vows))
        sfx.add(b + a if rng.random() < 0.5 else a + b)
    plural, past, present, obj = sorted(sfx)
    order = _ORDERS[index][int(rng.integers(2))]
    return Language(name, lexicon, order, index == 1, plural, past, present,
                    obj if index == 0 else "")  # fmt: skip


def _np(lang: Language, noun: str, plural: bool, adj: str | None, obj: bool) -> tuple[str, str]:
    word = lang.lexicon[noun] + (lang.plural if plural else "")
    word += lang.object_case if obj else ""
    src = [word] if adj is None else ([word, lang.lexicon[adj]] if lang.adj_after
                                      else [lang.lexicon[adj], word])  # fmt: skip
    eng_noun = dict(NOUNS)[noun] if plural else noun
    return " ".join(src), " ".join(["the"] + ([adj] if adj else []) + [eng_noun])


def render(lang: Language, spec: tuple) -> Sentence:
    """The sentence ``spec`` (see :attr:`Sentence.spec`) in ``lang`` and in English."""
    s, s_pl, s_adj, v, past, o, o_pl, o_adj = spec
    s_src, s_eng = _np(lang, s, s_pl, s_adj, False)
    o_src, o_eng = _np(lang, o, o_pl, o_adj, True)
    forms = {t[1]: t for t in VERBS}[v]
    v_eng = forms[2] if past else (forms[1] if s_pl else forms[0])
    v_src = lang.lexicon[v] + (lang.past if past else lang.present)
    parts = {"S": s_src, "O": o_src, "V": v_src}
    source = " ".join(parts[c] for c in lang.order)
    return Sentence(source, f"{s_eng} {v_eng} {o_eng}", spec)


def ctnl_task(
    seed: int, index: int, *, n_parallel: int = 16, n_test: int = 12, n_nouns: int = 8,
    n_verbs: int = 5, n_adjectives: int = 4, adj_rate: float = 0.3,
) -> CTNLTask:  # fmt: skip
    """Language ``index`` of ``seed`` with ``n_parallel`` examples and ``n_test`` held-out
    sentences, all distinct (no held-out sentence equals an example on either side)."""
    if n_parallel < 0 or n_test < 1:
        raise ValueError(f"need n_parallel >= 0 and n_test >= 1, got {n_parallel}, {n_test}")
    lang = make_language(seed, index, n_nouns=n_nouns, n_verbs=n_verbs,
                         n_adjectives=n_adjectives)  # fmt: skip
    nouns = [w for w, _ in NOUNS if w in lang.lexicon]
    verbs = [t[1] for t in VERBS if t[1] in lang.lexicon]
    adjs = [a for a in ADJECTIVES if a in lang.lexicon]
    rng = make_rng(seed, "conlang-sentences", index)
    want = n_parallel + n_test
    possible = len(nouns) * (len(nouns) - 1) * len(verbs) * 8 * (len(adjs) + 1) ** 2
    if want > possible // 4:
        raise ValueError(f"{want} sentences from so small a lexicon would repeat; lower "
                         "n_parallel + n_test or use more words")  # fmt: skip
    seen_src, seen_eng = set(), set()
    out: list[Sentence] = []
    for _ in itertools.count():
        s, o = (str(x) for x in rng.choice(nouns, 2, replace=False))
        adj = [str(rng.choice(adjs)) if rng.random() < adj_rate else None for _ in range(2)]
        spec = (s, bool(rng.random() < 0.5), adj[0], str(rng.choice(verbs)),
                bool(rng.random() < 0.5), o, bool(rng.random() < 0.5), adj[1])  # fmt: skip
        sent = render(lang, spec)
        if sent.source in seen_src or sent.english in seen_eng:
            continue
        seen_src.add(sent.source)
        seen_eng.add(sent.english)
        out.append(sent)
        if len(out) == want:
            break
    words = sorted(lang.lexicon.items(), key=lambda kv: (kv[0] not in nouns, kv[0] not in verbs))
    dictionary = [(w, e) for e, w in words]
    return CTNLTask(lang, dictionary, out[:n_parallel], out[n_parallel:])
