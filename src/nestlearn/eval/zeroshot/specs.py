"""The zero-shot tasks of the paper's Table 2 and their prompts (lm-eval 0.4.13 formats).

Each task turns a data row (schema of :mod:`nestlearn.eval.zeroshot.readers`) into requests
for a language model, exactly as lm-evaluation-harness 0.4.13 builds them zero-shot
(no description, no few-shot examples; ``target_delimiter`` = ``" "``):

============== ======================================= ====================================
task           context                                 continuation(s)
============== ======================================= ====================================
piqa           ``"Question: {goal}\\nAnswer:"``         ``" " + sol1``, ``" " + sol2``
arc_easy/-chal ``"Question: {question}\\nAnswer:"``     ``" " + choice`` for each choice
winogrande     ``sentence[:i] + option`` (i = ``_``)    ``" " + sentence[i+1:].strip()``
boolq          ``"{passage}\\nQuestion: {question}?``   ``" no"``, ``" yes"``
               ``\\nAnswer:"``
social_iqa     ``"Q: {context} {question}\\nA:"``        ``" " + answerA/B/C``
lambada_openai ``text`` without its last word           ``" " + last word``
wikitext       (rolling) the detokenised article       (whole article)
============== ======================================= ====================================

Metrics, as lm-eval computes them: ``acc`` = the choice with the largest summed
log-likelihood is the gold one; ``acc_norm`` = the same after dividing each log-likelihood
by the choice string's length in characters (``len(choice)``, the delimiter not counted;
equal to its UTF-8 byte length for ASCII text); LAMBADA ``acc`` = greedy decoding
reproduces the last word, ``perplexity`` = exp(-mean log-likelihood of the last word);
WikiText ``word_perplexity`` = exp(-sum ll / words), ``byte_perplexity`` = exp(-sum ll / bytes),
``bits_per_byte`` = -sum ll / bytes / ln 2, where words and bytes are counted on the
original (not detokenised) article.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nestlearn.eval.zeroshot import readers


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question as ``(context, continuation)`` requests, one per choice.

    ``choice_chars[i]`` is the length in characters that ``acc_norm`` divides choice ``i``'s
    log-likelihood by (lm-eval: ``len`` of the choice string).
    """

    requests: tuple[tuple[str, str], ...]
    gold: int
    choice_chars: tuple[int, ...]


@dataclass(frozen=True)
class TargetItem:
    """Score ``target`` after ``context`` (LAMBADA): log-likelihood and greedy exact match."""

    context: str
    target: str


@dataclass(frozen=True)
class RollingItem:
    """A whole document scored by rolling log-likelihood (WikiText).

    ``text`` is what the model scores; ``words``/``bytes`` normalise the perplexities.
    """

    text: str
    words: int
    bytes: int


Item = ChoiceItem | TargetItem | RollingItem
Kind = Literal["multiple_choice", "loglikelihood", "loglikelihood_rolling"]


@dataclass(frozen=True)
class TaskSpec:
    """A zero-shot task: where its rows come from and how they become requests."""

    name: str
    """lm-eval's task name."""
    kind: Kind
    read: Callable[[Path], list[dict[str, Any]]]
    to_item: Callable[[dict[str, Any]], Item]
    rows: int
    """Rows in the shipped file (PROVENANCE.md); a different count is reported, not fatal."""
    split: str
    metrics: tuple[str, ...]

    def items(self, data_dir: Path, limit: int | None = None) -> list[Item]:
        """The first ``limit`` (default all) rows of the task as requests."""
        rows = self.read(data_dir)
        if limit is not None:
            rows = rows[:limit]
        return [self.to_item(r) for r in rows]


# ------------------------------------------------------------------------- prompts
def _mc(context: str, choices: list[str], gold: int) -> ChoiceItem:
    return ChoiceItem(
        tuple((context, " " + c) for c in choices), gold, tuple(len(c) for c in choices)
    )


def piqa_item(row: dict[str, Any]) -> ChoiceItem:
    return _mc(f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"]))


def arc_item(row: dict[str, Any]) -> ChoiceItem:
    labels = list(row["choices"]["label"])
    if row["answerKey"] not in labels:
        raise ValueError(f"ARC row {row.get('id')}: answerKey {row['answerKey']!r} not in {labels}")
    return _mc(
        f"Question: {row['question']}\nAnswer:",
        list(row["choices"]["text"]),
        labels.index(row["answerKey"]),
    )


def winogrande_item(row: dict[str, Any]) -> ChoiceItem:
    # "Partial scoring" (Trinh & Le 2018, as in lm-eval): the option fills the blank inside
    # the context and only the text after the blank is scored, so both choices are judged
    # on the same continuation.
    sentence = row["sentence"]
    cut = sentence.index("_")
    contexts = [sentence[:cut] + row["option1"], sentence[:cut] + row["option2"]]
    cont = " " + sentence[cut + 1 :].strip()
    gold = {"1": 0, "2": 1}[str(row["answer"])]
    return ChoiceItem(tuple((c, cont) for c in contexts), gold, tuple(len(c) for c in contexts))


def boolq_item(row: dict[str, Any]) -> ChoiceItem:
    return _mc(
        f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ["no", "yes"], int(row["label"])
    )


def social_iqa_item(row: dict[str, Any]) -> ChoiceItem:
    return _mc(
        f"Q: {row['context']} {row['question']}\nA:",
        [row["answerA"], row["answerB"], row["answerC"]],
        int(row["label"]) - 1,
    )


def lambada_item(row: dict[str, Any]) -> TargetItem:
    words = row["text"].split(" ")
    return TargetItem(" ".join(words[:-1]), " " + words[-1])


# lm-eval's ``wikitext_detokenizer`` as an ordered table (order matters). The "/' [0-9]/"
# pattern is lm-eval's own (it matches the literal text "/' 5/", never in WikiText); it is
# kept so that scores stay identical to lm-eval's.
_DETOK: tuple[tuple[str, str, bool], ...] = (
    ("s '", "s'", False),
    (r"/' [0-9]/", r"/'[0-9]/", True),
    (" @-@ ", "-", False),
    (" @,@ ", ",", False),
    (" @.@ ", ".", False),
    *((f" {p} ", f"{p} ", False) for p in ":;.!?,"),
    (r"\(\s*([^\)]*?)\s*\)", r"(\1)", True),
    (r"\[\s*([^\]]*?)\s*\]", r"[\1]", True),
    (r"{\s*([^}]*?)\s*}", r"{\1}", True),
    (r"\"\s*([^\"]*?)\s*\"", r'"\1"', True),
    (r"'\s*([^']*?)\s*'", r"'\1'", True),
    ("= = = =", "====", False),
    ("= = =", "===", False),
    ("= =", "==", False),
    (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}", False),
    (" \n", "\n", False),
    ("\n ", "\n", False),
    (" N ", " 1 ", False),
    (" 's", "'s", False),
)


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's tokenisation (``@-@``, spaced punctuation) as lm-eval does."""
    for pattern, repl, is_regex in _DETOK:
        text = re.sub(pattern, repl, text) if is_regex else text.replace(pattern, repl)
    return text


def wikitext_item(row: dict[str, Any]) -> RollingItem:
    page = row["page"]
    return RollingItem(
        wikitext_detokenize(page), len(re.split(r"\s+", page)), len(page.encode("utf-8"))
    )


# ------------------------------------------------------------------------- registry
_MC = ("acc", "acc_norm")

TASKS: dict[str, TaskSpec] = {
    s.name: s
    for s in (
        TaskSpec("piqa", "multiple_choice", readers.read_piqa, piqa_item, 1838, "validation", _MC),
        TaskSpec("arc_easy", "multiple_choice", readers.read_arc_easy, arc_item, 2376, "test", _MC),
        TaskSpec(
            "arc_challenge",
            "multiple_choice",
            readers.read_arc_challenge,
            arc_item,
            1172,
            "test",
            _MC,
        ),
        TaskSpec(
            "winogrande",
            "multiple_choice",
            readers.read_winogrande,
            winogrande_item,
            1267,
            "validation",
            ("acc",),
        ),
        TaskSpec(
            "boolq", "multiple_choice", readers.read_boolq, boolq_item, 3270, "validation", ("acc",)
        ),
        TaskSpec(
            "social_iqa",
            "multiple_choice",
            readers.read_social_iqa,
            social_iqa_item,
            1954,
            "validation",
            ("acc",),
        ),
        TaskSpec(
            "lambada_openai",
            "loglikelihood",
            readers.read_lambada_openai,
            lambada_item,
            5153,
            "test",
            ("perplexity", "acc"),
        ),
        TaskSpec(
            "wikitext",
            "loglikelihood_rolling",
            readers.read_wikitext,
            wikitext_item,
            62,
            "test",
            ("word_perplexity", "byte_perplexity", "bits_per_byte"),
        ),
    )
}

ALIASES: dict[str, str] = {
    "arc_e": "arc_easy",
    "arc-e": "arc_easy",
    "arc_c": "arc_challenge",
    "arc-c": "arc_challenge",
    "wino": "winogrande",
    "siqa": "social_iqa",
    "lambada": "lambada_openai",
    "lmb": "lambada_openai",
    "wikitext2": "wikitext",
    "wikitext-2": "wikitext",
    "wiki": "wikitext",
}

NOT_SHIPPED: dict[str, str] = {
    "hellaswag": "HellaSwag is not shipped (its wikiHow-derived text is under a takedown "
    "claim); its column shows n/a",
}

PAPER_ORDER: tuple[str, ...] = (
    "wikitext",
    "lambada_openai",
    "piqa",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "social_iqa",
    "boolq",
)
"""All shipped tasks, in the order of the paper's Table 2 columns."""


def parse_task_list(spec: str | list[str]) -> list[str]:
    """Canonical task names from ``"piqa,arc_e,..."`` (``all``/``paper`` = every shipped task).

    Raises ``ValueError`` naming the unknown names and the known ones.
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    bad: list[str] = []
    for raw in (p.strip().lower() for p in parts):
        if not raw:
            continue
        if raw in ("all", "paper"):
            names = list(PAPER_ORDER)
        elif raw in TASKS:
            names = [raw]
        elif raw in ALIASES:
            names = [ALIASES[raw]]
        elif raw in NOT_SHIPPED:
            raise ValueError(NOT_SHIPPED[raw])
        else:
            bad.append(raw)
            continue
        out.extend(n for n in names if n not in out)
    if bad:
        raise ValueError(
            f"unknown task(s) {bad}; choose from {', '.join(TASKS)} (or 'all'); aliases: "
            + ", ".join(f"{a}={t}" for a, t in ALIASES.items())
        )
    if not out:
        raise ValueError("no task given; e.g. --tasks piqa,arc_easy or --tasks all")
    return out
