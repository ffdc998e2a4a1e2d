"""A small-scale, token-level analogue of RULER's S-NIAH-1/2/3 for models trained on the task.

The Nested Learning paper (arXiv 2512.24695, Table 1) and Titans (Table 2) score language models
of 340M-760M parameters on RULER's single-needle tasks at 2K-16K tokens. A CPU-sized model trained
on a byte corpus for a few minutes cannot read RULER's English prompts, so this is the recipe the
MQAR and MAD tasks use instead: a small model is trained on the retrieval task itself at a short
length (512 tokens by default) and tested at longer ones (2K, 8K), which is what the chart
measures - whether the model keeps one needle through a long haystack it was not trained on.

Tokens are words of a small task vocabulary (:func:`sniah_vocab`): RULER's layout, compacted::

    <bos> haystack ... <needle> KEY_ADJ KEY_NOUN <is> v1 .. vn <end> ... haystack <query> KEY_ADJ KEY_NOUN <is> v1 .. vn

The needle ("one of the special magic numbers for {adjective-noun} is: {value}.") sits at a
sentence boundary at the requested depth; the question at the end repeats its key. The model
must produce the value after the final ``<is>``: the ``n`` value tokens are scored (targets
are :data:`IGNORE_INDEX` elsewhere), teacher-forced, so a sample is right exactly when greedy
decoding would output the whole value (RULER's string match of a one-value answer).

Values are tokenized as Llama's tokenizer does, one token per digit (``#0``-``#9``, hex
``#a``-``#f``), and **the digits of a value are distinct** (RULER's 7-digit numbers repeat a
digit in 94 % of samples). With repeats, copying a value needs the two previous tokens to tell
the repeated digits apart; a 2-layer width-64 transformer trained on CPU did not learn that
(measured at 64 tokens: 60 % of digits and 25 % of values right after 1,250 steps, flat), while
with distinct digits one-token induction suffices and it reaches 92 % of values in 800 steps.
A value still carries 19 bits (7 distinct decimal digits) or 40 bits (12 of 16 hex digits).

============ ============================= ================== =====================================
task         RULER                         haystack           value
============ ============================= ================== =====================================
``s_niah_1`` ``niah_single_1`` (pass-key)  RULER's noise      7-digit number (7 tokens)
                                           sentence, repeated
``s_niah_2`` ``niah_single_2`` (number)    corpus text        7-digit number (7 tokens)
``s_niah_3`` ``niah_single_3`` (uuid)      corpus text        12 hex digits (12 tokens; RULER: a
                                                              32-hex UUID)
============ ============================= ================== =====================================

Essay haystacks are the embedded corpus's sentences as lower-cased words: the ``validation``
split for training samples, the held-out ``test`` split for test samples, so a test haystack is
text the model has never seen. Words outside the :data:`ESSAY_WORDS` most frequent ones of those
two splits become ``<unk>``; digits in the text are dropped, so the only numbers are the needle's.
Keys are one of 32 x 32 adjective-noun pairs (from :mod:`.words`), with their own tokens.

Lengths: a sample of length ``L`` has exactly ``L`` input tokens (``inputs = seq[:-1]``,
``targets = seq[1:]``). Depth: training samples draw it uniformly in [0, 100] percent; test
samples cycle through :data:`TEST_DEPTHS` (0, 10, ..., 100), sample ``i`` at ``depths[i % 11]``.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from nestlearn.data.synthetic.common import IGNORE_INDEX, TokenSegment, make_rng
from nestlearn.data.synthetic.haystack import NOISE_UNIT, corpus_sentences, weave
from nestlearn.data.synthetic.words import ADJECTIVES, NOUNS

SPECIALS: tuple[str, ...] = ("<bos>", "<pad>", "<unk>", "<needle>", "<query>", "<is>", "<end>")
"""Control tokens: ids 0..6 in this order."""

VALUE_TOKENS: tuple[str, ...] = tuple(f"#{c}" for c in "0123456789abcdef")
"""Value tokens: one per digit (``#0``-``#9``, hex ``#a``-``#f``)."""

KEY_WORDS = 32
"""Adjectives and nouns available to keys (32 x 32 = 1,024 keys)."""

ESSAY_WORDS = 1000
"""Most frequent words of the validation + test corpus text kept as haystack tokens."""

TEST_DEPTHS: tuple[float, ...] = tuple(float(d) for d in range(0, 101, 10))
"""Needle depths (percent) test samples cycle through."""

_WORD = re.compile(r"[a-z]+|[.,;:!?]")


@dataclass(frozen=True)
class SNIAHTask:
    """One single-needle task: where its haystack comes from and what its value looks like."""

    name: str
    title: str
    ruler_name: str
    haystack: str
    """``repeat`` (RULER's noise sentence) or ``essay`` (corpus text)."""
    value_digits: int
    """Length of the value in digits."""
    value_base: int
    """10 (a decimal number, first digit not 0) or 16 (hex, UUID-like)."""

    @property
    def value_tokens(self) -> int:
        """Tokens the value takes (:func:`value_pieces`: one per digit)."""
        return self.value_digits


SNIAH_TASKS: dict[str, SNIAHTask] = {
    t.name: t
    for t in (
        SNIAHTask("s_niah_1", "S-NIAH-1 (pass-key)", "niah_single_1", "repeat", 7, 10),
        SNIAHTask("s_niah_2", "S-NIAH-2 (number)", "niah_single_2", "essay", 7, 10),
        SNIAHTask("s_niah_3", "S-NIAH-3 (uuid-like)", "niah_single_3", "essay", 12, 16),
    )
}
"""The three tasks by name (the names of :data:`nestlearn.data.synthetic.niah.NIAH_TASKS`)."""


def words_of(text: str) -> list[str]:
    """Lower-cased words and punctuation of ``text`` (digits and other symbols dropped)."""
    return _WORD.findall(text.lower())


@functools.lru_cache(maxsize=1)
def sniah_vocab() -> dict[str, int]:
    """The task vocabulary: :data:`SPECIALS`, :data:`VALUE_TOKENS`, key words (``adj:...``,
    ``noun:...``), then the essay words (RULER's noise words always among them)."""
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for s in VALUE_TOKENS:
        vocab[s] = len(vocab)
    for a in ADJECTIVES[:KEY_WORDS]:
        vocab[f"adj:{a}"] = len(vocab)
    for n in NOUNS[:KEY_WORDS]:
        vocab[f"noun:{n}"] = len(vocab)
    counts: Counter[str] = Counter()
    for split in ("validation", "test"):
        for sent in corpus_sentences(split):
            counts.update(words_of(sent))
    noise = words_of(NOISE_UNIT)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    essay = list(dict.fromkeys([*noise, *(w for w, _ in ranked)]))[:ESSAY_WORDS]
    for w in essay:
        vocab[w] = len(vocab)
    return vocab


def sniah_vocab_size() -> int:
    """Number of ids in :func:`sniah_vocab`."""
    return len(sniah_vocab())


def _encode(words: Sequence[str]) -> np.ndarray:
    vocab = sniah_vocab()
    unk = vocab["<unk>"]
    return np.array([vocab.get(w, unk) for w in words], dtype=np.int64)


@functools.lru_cache(maxsize=4)
def haystack_pieces(source: str) -> tuple[np.ndarray, ...]:
    """Token ids of the haystack's sentences: ``repeat`` (RULER's noise, 5 sentences) or a
    corpus split name (``validation``, ``test``). Empty sentences are dropped."""
    if source == "repeat":
        texts: Sequence[str] = [s + "." for s in NOISE_UNIT.split(".") if s.strip()]
    elif source in ("validation", "test"):
        texts = corpus_sentences(source)
    else:
        raise ValueError(
            f"haystack source must be repeat, validation or test, got {source!r} "
            "(the training split is never a haystack)"
        )
    pieces = tuple(ids for ids in (_encode(words_of(t)) for t in texts) if len(ids))
    if not pieces:
        raise ValueError(f"haystack source {source!r} holds no words")
    return pieces


def _fill(pieces: tuple[np.ndarray, ...], start: int, n_tokens: int) -> list[np.ndarray]:
    """Sentences from ``start`` on (wrapping) until ``n_tokens`` ids; the last one is cut."""
    out: list[np.ndarray] = []
    have, i = 0, start % len(pieces)
    while have < n_tokens:
        piece = pieces[i][: n_tokens - have]
        out.append(piece)
        have += len(piece)
        i = (i + 1) % len(pieces)
    return out


def _value(spec: SNIAHTask, rng: np.random.Generator) -> str:
    """Distinct digits (see the module docstring), the first not 0 for a decimal number."""
    if spec.value_digits > spec.value_base:
        raise ValueError(f"{spec.name}: {spec.value_digits} distinct base-{spec.value_base} digits")
    while True:
        digits = rng.permutation(spec.value_base)[: spec.value_digits]
        if spec.value_base != 10 or digits[0] != 0:  # RULER: numbers in [10^6, 10^7)
            return "".join("0123456789abcdef"[d] for d in digits)


def value_pieces(value: str, base: int) -> list[str]:
    """The tokens of a value: one per digit (``"4072913"`` -> ``#4 #0 #7 #2 #9 #1 #3``)."""
    digits = "0123456789abcdef"[:base]
    if base not in (10, 16) or not value or any(c not in digits for c in value):
        raise ValueError(f"{value!r} is not a base-{base} number (base 10 or 16)")
    return [f"#{c}" for c in value]


@dataclass
class SNIAHSample:
    """One sample: ``ids [length + 1]`` (inputs are ``ids[:-1]``), its needle and answer."""

    task: str
    length: int
    index: int
    ids: np.ndarray
    key: tuple[str, str]
    value: str
    """The value as digits (``"4072913"``, ``"0a3f..."``)."""
    value_tokens: list[str]
    depth: float
    needle_start: int
    """Position of ``<needle>`` in ``ids``."""

    @property
    def answer_start(self) -> int:
        """Position in ``ids`` of the answer's first value token."""
        return len(self.ids) - len(self.value_tokens)


def sniah_sample(
    task: str | SNIAHTask,
    length: int,
    index: int,
    *,
    split: str = "test",
    seed: int = 0,
    depth: float | None = None,
) -> SNIAHSample:
    """Sample ``index`` of ``task`` with ``length`` input tokens (deterministic in all arguments).

    ``split`` names the essay text (``validation`` for training, ``test`` for testing) and the
    random stream; ``depth`` (percent) defaults to :data:`TEST_DEPTHS` cycled for ``test`` and
    a uniform draw otherwise.
    """
    spec = _get(task)
    rng = make_rng(seed, "sniah", spec.name, split, length, index)
    key = (ADJECTIVES[rng.integers(KEY_WORDS)], NOUNS[rng.integers(KEY_WORDS)])
    value = _value(spec, rng)
    if depth is None:
        depth = TEST_DEPTHS[index % len(TEST_DEPTHS)] if split == "test" else rng.uniform(0, 100)
    key_words = [f"adj:{key[0]}", f"noun:{key[1]}"]
    value_words = value_pieces(value, spec.value_base)
    needle = _encode(["<needle>", *key_words, "<is>", *value_words, "<end>"])
    question = _encode(["<query>", *key_words, "<is>", *value_words])
    hay_tokens = length + 1 - 1 - len(needle) - len(question)
    if hay_tokens < 0:
        raise ValueError(
            f"length={length} leaves no room for {spec.name}'s needle and question "
            f"({1 + len(needle) + len(question) - 1} tokens); use length >= 64"
        )
    pieces = haystack_pieces("repeat" if spec.haystack == "repeat" else split)
    start = 0 if spec.haystack == "repeat" else int(rng.integers(len(pieces)))
    context, placed = weave(_fill(pieces, start, hay_tokens), [(depth, "needle", needle)])
    ids = np.concatenate([_encode(["<bos>"]), context, question])
    return SNIAHSample(
        task=spec.name,
        length=length,
        index=index,
        ids=ids,
        key=key,
        value=value,
        value_tokens=value_words,
        depth=float(depth),
        needle_start=1 + placed[0].token_start,
    )


def sniah_segment(
    task: str | SNIAHTask,
    length: int,
    num: int,
    *,
    split: str = "test",
    seed: int = 0,
    start: int = 0,
) -> TokenSegment:
    """Samples ``start .. start + num - 1`` as a :class:`TokenSegment` (targets only at the
    answer's value positions); ``meta`` records each sample's depth and needle position."""
    samples = [
        sniah_sample(task, length, i, split=split, seed=seed) for i in range(start, start + num)
    ]
    ids = np.stack([s.ids for s in samples])
    targets = np.full((num, length), IGNORE_INDEX, dtype=np.int64)
    a = samples[0].answer_start
    targets[:, a - 1 :] = ids[:, a:]
    spec = _get(task)
    return TokenSegment(
        inputs=ids[:, :-1].copy(),
        targets=targets,
        name=f"{spec.name}@{length}",
        meta={
            "task": spec.name,
            "length": length,
            "split": split,
            "seed": seed,
            "depths": [s.depth for s in samples],
            "needle_starts": [s.needle_start for s in samples],
        },
    )


def sniah_batches(
    tasks: str | SNIAHTask | Sequence[str | SNIAHTask],
    length: int,
    batch_size: int,
    *,
    seed: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless training batches ``(inputs [B, L], targets [B, L])`` of fresh samples (essay
    haystacks from the validation split). Batch ``b`` is of task ``tasks[b % len(tasks)]``
    and holds its samples ``b*B .. b*B + B - 1``."""
    specs = [_get(t) for t in ([tasks] if isinstance(tasks, (str, SNIAHTask)) else tasks)]
    if not specs:
        raise ValueError("sniah_batches needs at least one task")
    b = 0
    while True:
        seg = sniah_segment(
            specs[b % len(specs)], length, batch_size, split="validation", seed=seed,
            start=b * batch_size,
        )  # fmt: skip
        yield seg.inputs, seg.targets
        b += 1


def decode(ids: Sequence[int]) -> str:
    """The words of ``ids`` joined by spaces (for reading samples)."""
    names = {i: w for w, i in sniah_vocab().items()}
    return " ".join(names[int(i)] for i in ids)


def _get(task: str | SNIAHTask) -> SNIAHTask:
    if isinstance(task, SNIAHTask):
        return task
    if task not in SNIAH_TASKS:
        raise ValueError(f"unknown S-NIAH task {task!r}; choose from {', '.join(SNIAH_TASKS)}")
    return SNIAH_TASKS[task]
