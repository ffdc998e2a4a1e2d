"""Fictional biographies and multiple-choice questions for knowledge incorporation.

The blog post behind the paper names knowledge incorporation as one of its experiment families:
a model reads new documents and must answer questions about them later, with the documents no
longer in context. For the answer to come from the documents and nothing else, the facts here
are generated: ``n_entities`` invented people (names from a syllable generator, no real word),
each with a birthplace (an invented town), an occupation and a birth year. One short document
per person states the three facts in a shuffled order of sentences (templates vary with the
seed). Each fact gives one question with four options: the answer and three distractors drawn
from the same attribute of *other* people of the set, so every option is mentioned equally
often in the documents and only the binding person -> value tells them apart.

Questions never contain their answer (tested); the answer is always in the person's document.
Deterministic in ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nestlearn.data.synthetic.common import make_rng

__all__ = ["ATTRIBUTES", "OCCUPATIONS", "FactDocument", "FactQuestion", "FactSet", "fact_set"]

OCCUPATIONS: tuple[str, ...] = (
    "glassblower", "beekeeper", "cartographer", "blacksmith", "clockmaker", "ferryman",
    "bookbinder", "weaver", "lighthouse keeper", "shipwright", "potter", "astronomer",
    "miller", "stonemason", "violin maker", "tanner", "cooper", "perfumer", "baker", "surveyor",
)  # fmt: skip

ATTRIBUTES = ("town", "occupation", "year")

_QUESTIONS = {
    "town": "In which town was {name} born?",
    "occupation": "What was {name}'s occupation?",
    "year": "In which year was {name} born?",
}
_SENTENCES = {
    "town": ("{name} was born in the town of {town}.", "{name}'s birthplace was {town}.",
             "The hometown of {name} was {town}."),
    "occupation": ("{name} worked as a {occupation}.", "By trade, {name} was a {occupation}.",
                   "{name} earned a living as a {occupation}."),
    "year": ("{name} was born in {year}.", "The year of {name}'s birth was {year}.",
             "{name} came into the world in {year}."),
}  # fmt: skip


@dataclass(frozen=True)
class FactDocument:
    """One person's biography."""

    person: str
    text: str
    facts: dict[str, str]


@dataclass(frozen=True)
class FactQuestion:
    """A multiple-choice question about one fact."""

    person: str
    attribute: str
    question: str
    options: list[str]
    answer: int
    """Index of the right option."""

    def prompt(self) -> str:
        """``Question: ...\\nAnswer:``; each option is scored as ``" " + option``."""
        return f"Question: {self.question}\nAnswer:"


@dataclass(frozen=True)
class FactSet:
    documents: list[FactDocument]
    questions: list[FactQuestion]

    def corpus(self) -> str:
        """The documents as one text, separated by blank lines."""
        return "\n\n".join(d.text for d in self.documents) + "\n"


def _names(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    cons, vows = "b d f g k l m n p r s t v z".split(), "a e i o u".split()
    out: list[str] = []
    while len(out) < n:
        w = "".join(
            str(rng.choice(cons)) + str(rng.choice(vows)) for _ in range(rng.integers(2, 4))
        )
        w += str(rng.choice(["", "n", "r", "sk", "th", "l"]))
        if w not in taken:
            taken.add(w)
            out.append(w.capitalize())
    return out


def fact_set(seed: int, *, n_entities: int = 10, n_options: int = 4) -> FactSet:
    """``n_entities`` fictional biographies and ``3 * n_entities`` questions about them."""
    if not n_options <= n_entities <= len(OCCUPATIONS):
        raise ValueError(
            f"n_entities must be in {n_options}..{len(OCCUPATIONS)} (n_options distinct values "
            f"per attribute are needed), got {n_entities}"
        )
    if n_options < 2:
        raise ValueError(f"n_options must be at least 2, got {n_options}")
    rng = make_rng(seed, "facts")
    taken: set[str] = set()
    firsts = _names(rng, n_entities, taken)
    lasts = _names(rng, n_entities, taken)
    towns = _names(rng, n_entities, taken)
    years = [str(y) for y in 1700 + rng.choice(250, n_entities, replace=False)]
    jobs = [OCCUPATIONS[i] for i in rng.choice(len(OCCUPATIONS), n_entities, replace=False)]
    docs: list[FactDocument] = []
    questions: list[FactQuestion] = []
    for i in range(n_entities):
        name = f"{firsts[i]} {lasts[i]}"
        facts = {"town": towns[i], "occupation": jobs[i], "year": years[i]}
        order = list(rng.permutation(len(ATTRIBUTES)))
        text = " ".join(
            str(rng.choice(_SENTENCES[ATTRIBUTES[a]])).format(name=name, **facts) for a in order
        )
        docs.append(FactDocument(name, text, facts))
        pool = {"town": towns, "occupation": jobs, "year": years}
        for attr in ATTRIBUTES:
            others = [v for v in pool[attr] if v != facts[attr]]
            opts = [facts[attr]] + [str(x) for x in rng.choice(others, n_options - 1,
                                                                replace=False)]  # fmt: skip
            perm = rng.permutation(n_options)
            options = [opts[j] for j in perm]
            questions.append(FactQuestion(name, attr, _QUESTIONS[attr].format(name=name),
                                          options, int(np.argmax(perm == 0))))  # fmt: skip
    order = rng.permutation(len(docs))
    return FactSet([docs[i] for i in order], questions)
