"""RULER-style needle-in-a-haystack tasks (Hsieh et al. 2024, "RULER", arXiv 2404.06654).

The Nested Learning paper reports S-NIAH-1/2/3, MK-NIAH-1, MQ-NIAH and MV-NIAH at 4K/8K/16K
(arXiv 2512.24695, Table 1). RULER's definitions are kept:

* ``s_niah_1`` (RULER ``niah_single_1``, the pass-key task): ``repeat`` haystack, word key,
  7-digit number value, 1 needle.
* ``s_niah_2`` (``niah_single_2``): ``essay`` haystack, word key, number value.
* ``s_niah_3`` (``niah_single_3``): ``essay`` haystack, word key, UUID value.
* ``mk_niah_1`` (``niah_multikey_1``): ``essay`` haystack, 4 needles with different keys, one
  of them asked about.
* ``mk_niah_2`` (``niah_multikey_2``): the haystack is made only of distractor needles with
  other word keys; one real needle.
* ``mk_niah_3`` (``niah_multikey_3``): as mk_niah_2 with UUID keys and UUID values.
* ``mv_niah`` (``niah_multivalue``): one key with 4 needles (4 values); all 4 must be given.
* ``mq_niah`` (``niah_multiquery``): 4 keys, all 4 asked about; all 4 values must be given.

Needle: ``"One of the special magic {numbers|uuids} for {key} is: {value}."``; prompt: RULER's
template followed by its answer prefix (a base model completes it). Values are 7-digit numbers
or UUID4 strings; ``words`` keys are ``adjective-noun`` pairs (:mod:`.words`). ``essay``
haystacks come from the held-out corpus split (``test`` by default; RULER uses Paul Graham's
essays, which are not free to redistribute), ``repeat`` is RULER's noise sentence repeated and
``needles`` a haystack made only of distractor needles with other keys.

Length: ``len(input_ids) + max_new_tokens == length`` exactly (RULER fits the prompt so that
prompt + ``tokens_to_generate`` <= ``max_seq_length``; its niah budget is 128 tokens).
Depths: without ``depths``, RULER's rule - the needles' depths are drawn without replacement
from ``round(linspace(0, 100, 40))`` and sorted; with ``depths``, single-needle samples cycle
through them (``depths[index % len(depths)]``) so every depth of a heat map gets samples.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from nestlearn.data.synthetic.common import make_rng
from nestlearn.data.synthetic.haystack import (
    Insert,
    cycle_pool,
    encode_piece,
    fill_tokens,
    framed_prompt,
    prompt_head,
    sentence_pool,
)
from nestlearn.data.synthetic.words import ADJECTIVES, NOUNS
from nestlearn.data.tokenizers import Tokenizer

RULER_DEPTHS: tuple[int, ...] = tuple(int(d) for d in np.round(np.linspace(0, 100, 40)))
"""RULER's 40 needle depths in percent."""

TOKENS_TO_GENERATE = 128
"""RULER's generation budget for the niah tasks."""

NEEDLE = "One of the special magic {kind} for {key} is: {value}."


@dataclass(frozen=True)
class NIAHTask:
    """One RULER needle-in-a-haystack configuration (see the module table)."""

    name: str
    title: str
    ruler_name: str
    haystack: str
    key_type: str
    value_type: str
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1

    @property
    def num_needles(self) -> int:
        return self.num_keys * self.num_values


NIAH_TASKS: dict[str, NIAHTask] = {
    t.name: t
    for t in (
        NIAHTask("s_niah_1", "S-NIAH-1 (pass-key)", "niah_single_1", "repeat", "words", "numbers"),
        NIAHTask("s_niah_2", "S-NIAH-2 (number)", "niah_single_2", "essay", "words", "numbers"),
        NIAHTask("s_niah_3", "S-NIAH-3 (uuid)", "niah_single_3", "essay", "words", "uuids"),
        NIAHTask("mk_niah_1", "MK-NIAH-1", "niah_multikey_1", "essay", "words", "numbers", 4),
        NIAHTask("mk_niah_2", "MK-NIAH-2", "niah_multikey_2", "needle", "words", "numbers"),
        NIAHTask("mk_niah_3", "MK-NIAH-3", "niah_multikey_3", "needle", "uuids", "uuids"),
        NIAHTask("mv_niah", "MV-NIAH", "niah_multivalue", "essay", "words", "numbers", 1, 4),
        NIAHTask("mq_niah", "MQ-NIAH", "niah_multiquery", "essay", "words", "numbers", 4, 1, 4),
    )
}
"""The tasks by name; the paper's Table 1 uses s_niah_1/2/3, mk_niah_1, mq_niah and mv_niah."""


@dataclass
class NIAHSample:
    """One needle-in-a-haystack prompt.

    Attributes:
        input_ids: ``[length - max_new_tokens]`` int64 prompt ids (eos first, as documents
            start in training data, when the tokenizer has one).
        prompt: ``tokenizer.decode(input_ids)``.
        answers: the values a correct answer contains (RULER scores the fraction present).
        queries: the keys asked about.
        needles: the inserted needles (token/char positions, requested and reached depth),
            with ``needle_keys[i]`` / ``needle_values[i]`` their key and value.
    """

    task: str
    length: int
    index: int
    seed: int
    input_ids: np.ndarray
    prompt: str
    answers: list[str]
    queries: list[str]
    needles: list[Insert]
    needle_keys: list[str]
    needle_values: list[str]
    max_new_tokens: int
    haystack: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def depth(self) -> float:
        """Requested depth (percent) of the first needle: the heat-map row of S-NIAH samples."""
        return self.needles[0].depth

    def to_dict(self, with_ids: bool = False) -> dict:
        out = {
            "task": self.task,
            "length": self.length,
            "index": self.index,
            "seed": self.seed,
            "prompt": self.prompt,
            "answers": self.answers,
            "queries": self.queries,
            "needles": [
                {**n.to_dict(), "key": k, "value": v}
                for n, k, v in zip(self.needles, self.needle_keys, self.needle_values)
            ],
            "max_new_tokens": self.max_new_tokens,
            "haystack": self.haystack,
        }
        if with_ids:
            out["input_ids"] = self.input_ids.tolist()
        return out


def _random_item(kind: str, rng: np.random.Generator) -> str:
    if kind == "words":
        return f"{ADJECTIVES[rng.integers(len(ADJECTIVES))]}-{NOUNS[rng.integers(len(NOUNS))]}"
    if kind == "numbers":
        return str(int(rng.integers(10**6, 10**7)))  # RULER: 7-digit numbers
    if kind == "uuids":
        return str(uuid.UUID(bytes=rng.bytes(16), version=4))
    raise ValueError(f"unknown needle item type {kind!r}; use words, numbers or uuids")


def _unique(kind: str, n: int, rng: np.random.Generator, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        item = _random_item(kind, rng)
        if item not in taken:
            taken.add(item)
            out.append(item)
    return out


def _template(task: NIAHTask, query: str) -> tuple[str, str]:
    """RULER's niah template (head before the haystack, tail after it) plus its answer prefix."""
    plural = task.value_type  # "numbers" / "uuids"
    if task.num_queries * task.num_values == 1:
        kind = plural[:-1]
        head = (
            f"A special magic {kind} is hidden within the following text. Make sure to memorize "
            f"it. I will quiz you about the {kind} afterwards.\n"
        )
        tail = (
            f"\nWhat is the special magic {kind} for {query} mentioned in the provided text?"
            f" The special magic {kind} for {query} mentioned in the provided text is"
        )
    else:
        head = (
            f"Some special magic {plural} are hidden within the following text. Make sure to "
            f"memorize it. I will quiz you about the {plural} afterwards.\n"
        )
        tail = (
            f"\nWhat are all the special magic {plural} for {query} mentioned in the provided "
            f"text? The special magic {plural} for {query} mentioned in the provided text are"
        )
    return head, tail


def _join_queries(keys: Sequence[str]) -> str:
    if len(keys) == 1:
        return keys[0]
    return ", ".join(keys[:-1]) + ", and " + keys[-1]


def _depths(
    task: NIAHTask, index: int, rng: np.random.Generator, depths: Sequence[float] | None
) -> list[float]:
    n = task.num_needles
    if depths is None:
        return sorted(float(d) for d in rng.choice(RULER_DEPTHS, size=n, replace=False))
    if not depths:
        raise ValueError("depths must hold at least one percentage (0..100) or be None")
    if n == 1:
        return [float(depths[index % len(depths)])]
    pick = rng.choice(len(depths), size=n, replace=n > len(depths))
    return sorted(float(depths[i]) for i in pick)


def niah_sample(
    task: str | NIAHTask,
    tokenizer: Tokenizer,
    length: int,
    index: int,
    *,
    seed: int = 0,
    split: str = "test",
    depths: Sequence[float] | None = None,
    max_new_tokens: int = TOKENS_TO_GENERATE,
) -> NIAHSample:
    """Sample ``index`` of ``task`` at ``length`` tokens (deterministic in all arguments)."""
    spec = NIAH_TASKS[task] if isinstance(task, str) else task
    rng = make_rng(seed, "niah", spec.name, length, index)
    taken: set[str] = set()
    keys = _unique(spec.key_type, spec.num_keys, rng, taken)
    values = [_unique(spec.value_type, spec.num_values, rng, taken) for _ in keys]
    needles = [(k, v) for k, vs in zip(keys, values) for v in vs]
    needles = [needles[i] for i in rng.permutation(len(needles))]  # RULER shuffles the needles
    q_idx = sorted(rng.choice(spec.num_keys, size=spec.num_queries, replace=False).tolist())
    queries = [keys[i] for i in q_idx]
    answers = [v for i in q_idx for v in values[i]]
    head, tail = _template(spec, _join_queries(queries))
    needle_depths = _depths(spec, index, rng, depths)

    kind = spec.value_type
    inserts = [
        (d, text, encode_piece(tokenizer, text))
        for d, (k, v) in zip(needle_depths, needles)
        for text in [NEEDLE.format(kind=kind, key=k, value=v)]
    ]
    head_ids = prompt_head(tokenizer, head)
    tail_ids = np.asarray(tokenizer.encode(tail), dtype=np.int64)
    fixed = len(head_ids) + len(tail_ids) + sum(len(x[2]) for x in inserts)
    hay_tokens = length - max_new_tokens - fixed
    if max_new_tokens < 0 or hay_tokens < 0:
        raise ValueError(
            f"length={length} is too short for {spec.name} with tokenizer {tokenizer.name}: the "
            f"template and needles take {fixed} tokens plus {max_new_tokens} to generate; "
            f"use length >= {fixed + max_new_tokens + 64}"
        )
    if spec.haystack == "repeat":
        source: Iterator[np.ndarray] = cycle_pool(sentence_pool(tokenizer, "repeat"), 0)
    elif spec.haystack == "essay":
        pool = sentence_pool(tokenizer, split)
        source = cycle_pool(pool, int(rng.integers(len(pool))))
    else:
        source = _distractor_needles(spec, tokenizer, rng, taken)
    hay = fill_tokens(source, hay_tokens, tokenizer)
    ids, placed, meta = framed_prompt(tokenizer, head_ids, hay, inserts, tail_ids)
    return NIAHSample(
        task=spec.name,
        length=length,
        index=index,
        seed=seed,
        input_ids=ids,
        prompt=tokenizer.decode(ids),
        answers=answers,
        queries=queries,
        needles=placed,
        needle_keys=[k for k, _ in needles],
        needle_values=[v for _, v in needles],
        max_new_tokens=max_new_tokens,
        haystack=spec.haystack if spec.haystack != "essay" else f"corpus:{split}",
        meta=meta,
    )


def _distractor_needles(
    spec: NIAHTask, tokenizer: Tokenizer, rng: np.random.Generator, taken: set[str]
) -> Iterator[np.ndarray]:
    """RULER's ``needle`` haystack: needles whose keys are never the queried ones."""
    while True:
        key = _unique(spec.key_type, 1, rng, taken)[0]
        value = _random_item(spec.value_type, rng)
        yield encode_piece(tokenizer, NEEDLE.format(kind=spec.value_type, key=key, value=value))


def generate_niah(
    task: str | NIAHTask,
    tokenizer: Tokenizer,
    length: int,
    num_samples: int,
    *,
    seed: int = 0,
    split: str = "test",
    depths: Sequence[float] | None = None,
    max_new_tokens: int = TOKENS_TO_GENERATE,
    start: int = 0,
) -> list[NIAHSample]:
    """Samples ``start .. start + num_samples - 1`` of ``task`` at ``length`` tokens.

    Args:
        task: a name from :data:`NIAH_TASKS` or a custom :class:`NIAHTask`.
        tokenizer: lengths and positions are in this tokenizer's tokens.
        length: prompt tokens + ``max_new_tokens`` (e.g. 1024 ... 65536).
        seed: base seed; sample ``i`` depends only on ``(seed, task, length, i)``.
        split: corpus split of ``essay`` haystacks (``test`` or ``validation``; never train).
        depths: needle depths in percent (see the module docstring); None = RULER's rule.
        max_new_tokens: generation budget kept free inside ``length`` (RULER: 128).
    """
    if isinstance(task, str) and task not in NIAH_TASKS:
        raise ValueError(f"unknown NIAH task {task!r}; choose from {', '.join(NIAH_TASKS)}")
    if split == "train":
        raise ValueError("haystacks must not come from the training split; use test or validation")
    return [
        niah_sample(
            task,
            tokenizer,
            length,
            i,
            seed=seed,
            split=split,
            depths=depths,
            max_new_tokens=max_new_tokens,
        )
        for i in range(start, start + num_samples)
    ]
