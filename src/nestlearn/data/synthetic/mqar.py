"""Multi-query associative recall (MQAR; Arora, Eyuboglu et al. 2023, "Zoology", arXiv 2312.04927).

A sequence starts with ``num_kv_pairs`` key-value pairs (distinct keys from the lower half of
the vocabulary, excluding 0; distinct values from the upper half), followed by a query region
in which every key appears once more, at gaps drawn from a power law (``p(gap) ~ gap**(a-1)``,
``a = 0.01``: most queries come soon after the context, as repeated bigrams do in text). At a
query key the model must output its value; only those positions are scored.

Layout (``T = seq_len``, ``C = 2 * num_kv_pairs``)::

    inputs : k1 v1 k2 v2 ... kC/2 vC/2 | 0 0 k2 0 0 0 k1 0 ...   (T tokens)
    targets: -100 ...                  | . . v2 . . . v1 . ...   (value at each query key)

with the zeros replaced by random tokens when ``random_non_queries`` (Zoology's default).
Zoology's Figure 2 uses vocab 8,192, (T, kv) in {(64, 4), (128, 8), (256, 16)}, 100,000
training and 3,000 test examples per setting, 2-layer models without MLPs; it requires
``vocab_size > seq_len`` and ``4 * num_kv_pairs <= seq_len``.
"""

from __future__ import annotations

import numpy as np

from nestlearn.data.synthetic.common import IGNORE_INDEX, TokenSegment, TokenTask, make_rng

ZOOLOGY_VOCAB = 8192
ZOOLOGY_SETTINGS: tuple[tuple[int, int], ...] = ((64, 4), (128, 8), (256, 16))
"""(seq_len, num_kv_pairs) of Zoology Figure 2."""


def mqar_segment(
    num_examples: int,
    *,
    vocab_size: int = ZOOLOGY_VOCAB,
    seq_len: int = 64,
    num_kv_pairs: int = 4,
    power_a: float = 0.01,
    random_non_queries: bool = True,
    seed: int = 0,
    split: str = "train",
) -> TokenSegment:
    """``num_examples`` MQAR sequences: ``inputs``/``targets`` ``[N, seq_len]``.

    Deterministic in all arguments; ``split`` only keys the random stream so the train and
    test segments of one seed differ.
    """
    if seq_len % 2:
        raise ValueError(f"seq_len must be even, got {seq_len}")
    if vocab_size <= seq_len:
        raise ValueError(f"vocab_size={vocab_size} must exceed seq_len={seq_len} (Zoology's rule)")
    if 4 * num_kv_pairs > seq_len:
        raise ValueError(
            f"num_kv_pairs={num_kv_pairs} needs seq_len >= {4 * num_kv_pairs}, got {seq_len}"
        )
    if num_kv_pairs > vocab_size // 2 - 1:
        raise ValueError(f"num_kv_pairs={num_kv_pairs} exceeds the {vocab_size // 2 - 1} keys")
    if not 0 < power_a <= 1:
        raise ValueError(f"power_a must be in (0, 1], got {power_a}")
    rng = make_rng(seed, "mqar", split, vocab_size, seq_len, num_kv_pairs)
    context = 2 * num_kv_pairs
    half = vocab_size // 2
    space = (seq_len - context) // 2  # query slots: every other position after the context
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    p /= p.sum()
    inputs = np.zeros((num_examples, seq_len + 1), dtype=np.int64)
    labels = np.full((num_examples, seq_len + 1), IGNORE_INDEX, dtype=np.int64)
    for n in range(num_examples):
        keys = rng.choice(np.arange(1, half), size=num_kv_pairs, replace=False)
        values = rng.choice(np.arange(half, vocab_size), size=num_kv_pairs, replace=False)
        gaps = rng.choice(space, size=num_kv_pairs, replace=False, p=p)
        inputs[n, 0:context:2] = keys
        inputs[n, 1:context:2] = values
        inputs[n, context + 2 * gaps] = keys
        labels[n, context + 2 * gaps + 1] = values
    inputs, targets = inputs[:, :-1], labels[:, 1:]  # the value is predicted at its query key
    if random_non_queries:
        fill = rng.integers(0, vocab_size, size=inputs.shape)
        inputs = np.where(inputs == 0, fill, inputs)
    return TokenSegment(
        inputs=np.ascontiguousarray(inputs),
        targets=np.ascontiguousarray(targets),
        name=f"T={seq_len},kv={num_kv_pairs}",
        meta={
            "vocab_size": vocab_size,
            "seq_len": seq_len,
            "num_kv_pairs": num_kv_pairs,
            "power_a": power_a,
            "random_non_queries": random_non_queries,
        },
    )


def mqar_task(
    *,
    vocab_size: int = ZOOLOGY_VOCAB,
    train_settings: tuple[tuple[int, int], ...] = ZOOLOGY_SETTINGS,
    test_settings: tuple[tuple[int, int], ...] | None = None,
    num_train: int = 100_000,
    num_test: int = 3_000,
    power_a: float = 0.01,
    random_non_queries: bool = True,
    seed: int = 0,
) -> TokenTask:
    """MQAR train/test segments, one per ``(seq_len, num_kv_pairs)`` setting.

    ``num_train`` / ``num_test`` are per setting (Zoology: 100,000 / 3,000); the test settings
    default to the training ones.
    """
    common = dict(vocab_size=vocab_size, power_a=power_a, random_non_queries=random_non_queries)
    train = [
        mqar_segment(num_train, seq_len=t, num_kv_pairs=k, seed=seed, split="train", **common)
        for t, k in train_settings
    ]
    test = [
        mqar_segment(num_test, seq_len=t, num_kv_pairs=k, seed=seed, split="test", **common)
        for t, k in (test_settings or train_settings)
    ]
    return TokenTask(
        name="mqar",
        vocab_size=vocab_size,
        train=train,
        test=test,
        meta={**common, "train_settings": train_settings, "seed": seed},
    )
