"""chrF: the character n-gram F-score of Popović (2015), as sacrebleu computes it by default.

For each order ``n = 1..char_order`` the hypothesis and the reference (whitespace removed) are
cut into overlapping character n-grams; ``match_n`` is the size of the multiset intersection.
With ``P_n = match_n / hyp_n`` and ``R_n = match_n / ref_n`` averaged over the orders where both
strings have n-grams (the "effective order"), the score is

    chrF_beta = 100 * (1 + beta^2) * P * R / (beta^2 * P + R)

``beta = 2`` weighs recall twice as much as precision. A corpus score sums the per-order counts
over all sentence pairs first and applies the formula once (sacrebleu's ``corpus_score``); it is
not the mean of the sentence scores. This is sacrebleu 2.x ``CHRF()`` with its defaults
(``char_order=6, word_order=0, beta=2, whitespace=False, eps_smoothing=False``), written here
so that scoring needs no extra package; ``tests/eval/test_chrf.py`` checks hand-computed cases
and, where sacrebleu is installed, agreement with it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

__all__ = ["chrf", "chrf_statistics", "corpus_chrf", "f_from_statistics"]


def _ngrams(text: str, n: int) -> Counter[str]:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def chrf_statistics(hypothesis: str, reference: str, char_order: int = 6) -> list[int]:
    """``[hyp_n, ref_n, match_n]`` for ``n = 1..char_order``, flattened (length ``3 * order``)."""
    if char_order < 1:
        raise ValueError(f"char_order must be at least 1, got {char_order}")
    hyp = "".join(hypothesis.split())
    ref = "".join(reference.split())
    stats: list[int] = []
    for n in range(1, char_order + 1):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        stats += [sum(h.values()), sum(r.values()), sum((h & r).values())]
    return stats


def f_from_statistics(stats: Sequence[int], beta: float = 2.0) -> float:
    """chrF in ``[0, 100]`` from summed :func:`chrf_statistics`."""
    if len(stats) % 3:
        raise ValueError(f"statistics come in triples (hyp, ref, match); got {len(stats)} numbers")
    prec = rec = 0.0
    orders = 0
    for i in range(0, len(stats), 3):
        n_hyp, n_ref, n_match = stats[i : i + 3]
        if n_hyp > 0 and n_ref > 0:
            prec += n_match / n_hyp
            rec += n_match / n_ref
            orders += 1
    if orders == 0:
        return 0.0
    prec, rec = prec / orders, rec / orders
    if prec + rec == 0:
        return 0.0
    b2 = beta * beta
    return 100.0 * (1 + b2) * prec * rec / (b2 * prec + rec)


def chrf(hypothesis: str, reference: str, *, char_order: int = 6, beta: float = 2.0) -> float:
    """Sentence-level chrF in ``[0, 100]``."""
    return f_from_statistics(chrf_statistics(hypothesis, reference, char_order), beta)


def corpus_chrf(
    hypotheses: Sequence[str], references: Sequence[str], *, char_order: int = 6,
    beta: float = 2.0,
) -> float:  # fmt: skip
    """Corpus-level chrF in ``[0, 100]``: per-order counts summed over the pairs, then the F."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("corpus_chrf takes sequences of sentences, not one string; use chrf()")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references; pass one "
            "reference per hypothesis"
        )
    total = [0] * (3 * char_order)
    for h, r in zip(hypotheses, references):
        for i, v in enumerate(chrf_statistics(h, r, char_order)):
            total[i] += v
    return f_from_statistics(total, beta)
