"""BABILong-style samples (Kuratov et al. 2024, "BABILong", arXiv 2406.10149).

BABILong hides the facts of a bAbI question (Weston et al. 2015) sentence by sentence at random
positions of a long background text, keeps their order, and asks the question at the end; the
length of the whole input grows from 0 (facts only) to millions of tokens. The Nested Learning
paper uses it in Fig. 9 (arXiv 2512.24695, section 9.2). Here:

* tasks ``qa1``-``qa5`` (single/two/three supporting facts, two/three-argument relations), read
  from the bAbI v1.2 English test files (1,000 questions per task; CC BY 3.0, Facebook). The
  data are not shipped with nestlearn: give the folder with ``babi_dir=``, the environment
  variable ``NESTLEARN_BABI_DIR``, or keep a source checkout beside ``../shared/datasets/babi``.
* the facts of a question are every statement of its story before it (earlier questions are
  not facts), as in BABILong; ``supporting`` indexes the ones bAbI marks as needed.
* background text: the held-out corpus split (``test`` by default) instead of PG-19.
* prompt: ``<context>\\n{haystack with facts}\\n</context>\\n\\nQuestion: {q}\\nAnswer:``
  (BABILong's layout without its per-task instructions, for base models); ``length`` counts the
  prompt plus ``max_new_tokens`` exactly, and ``length=0`` means no background text at all.
* sample ``i`` asks the ``i``-th question of the task file (cycling), its fact positions drawn
  from ``(seed, task, length, i)``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

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
from nestlearn.data.tokenizers import Tokenizer

BABI_TASKS: dict[str, str] = {
    "qa1": "qa1_single-supporting-fact",
    "qa2": "qa2_two-supporting-facts",
    "qa3": "qa3_three-supporting-facts",
    "qa4": "qa4_two-arg-relations",
    "qa5": "qa5_three-arg-relations",
}
"""BABILong's qa1-qa5 and their bAbI file stems."""

BABI_ENV = "NESTLEARN_BABI_DIR"
ANSWER_TOKENS = 16
"""Generation budget: every qa1-qa5 answer is one word."""


@dataclass(frozen=True)
class BabiQuestion:
    """One bAbI question with the facts before it in its story.

    ``supporting`` indexes ``facts`` (bAbI's supporting-fact line ids, mapped).
    """

    task: str
    story: int
    line: int
    facts: tuple[str, ...]
    question: str
    answer: str
    supporting: tuple[int, ...]


def find_babi_dir(babi_dir: str | Path | None = None) -> Path:
    """The folder holding ``qa*_test.txt`` files (``en-10k``), from the argument, the
    ``NESTLEARN_BABI_DIR`` variable, or ``../shared/datasets/babi`` near the working directory
    or the source checkout."""
    here = Path(__file__).resolve()
    candidates = [Path(babi_dir)] if babi_dir else []
    if not babi_dir and os.environ.get(BABI_ENV):
        candidates.append(Path(os.environ[BABI_ENV]))
    if not babi_dir:
        candidates += [Path.cwd() / ".." / "shared" / "datasets" / "babi"]
        if len(here.parents) > 5:
            candidates.append(here.parents[5] / "shared" / "datasets" / "babi")
    for c in candidates:
        for sub in (c, c / "en-10k", c / "tasks_1-20_v1-2" / "en-10k", c / "en"):
            if sub.is_dir() and any(sub.glob("qa1_*_test.txt")):
                return sub
    raise FileNotFoundError(
        "bAbI test files (qa1_single-supporting-fact_test.txt ...) not found in "
        f"{[str(c) for c in candidates]}; pass the folder holding tasks_1-20_v1-2/en-10k "
        f"(--babi-dir / babi_dir=) or set {BABI_ENV}"
    )


def parse_babi(text: str, task: str) -> list[BabiQuestion]:
    """Questions of a bAbI file's ``text`` (format ``ID sentence`` / ``ID q<TAB>a<TAB>ids``)."""
    out: list[BabiQuestion] = []
    story = -1
    facts: list[str] = []
    line_to_fact: dict[int, int] = {}
    for raw in text.splitlines():
        if not raw.strip():
            continue
        num, _, rest = raw.strip().partition(" ")
        line_id = int(num)
        if line_id == 1:
            story += 1
            facts, line_to_fact = [], {}
        if "\t" in rest:
            q, a, sup = (p.strip() for p in rest.split("\t")[:3])
            idx = tuple(line_to_fact[int(s)] for s in sup.split())
            out.append(BabiQuestion(task, story, line_id, tuple(facts), q, a, idx))
        else:
            line_to_fact[line_id] = len(facts)
            facts.append(rest.strip())
    return out


@functools.lru_cache(maxsize=16)
def _load(task: str, folder: str) -> tuple[BabiQuestion, ...]:
    files = sorted(Path(folder).glob(f"{BABI_TASKS[task]}_test.txt"))
    if not files:
        raise FileNotFoundError(f"{BABI_TASKS[task]}_test.txt is not in {folder}")
    return tuple(parse_babi(files[0].read_text(encoding="utf-8"), task))


def load_babi(task: str, babi_dir: str | Path | None = None) -> tuple[BabiQuestion, ...]:
    """All questions of ``task`` (``qa1`` ... ``qa5``) in file order."""
    if task not in BABI_TASKS:
        raise ValueError(f"unknown bAbI task {task!r}; choose from {', '.join(BABI_TASKS)}")
    return _load(task, str(find_babi_dir(babi_dir)))


def babi_labels(task: str, babi_dir: str | Path | None = None) -> tuple[str, ...]:
    """Every answer that occurs in the task file: the candidate labels of scoring."""
    return tuple(sorted({q.answer for q in load_babi(task, babi_dir)}))


@dataclass
class BabiLongSample:
    """One BABILong prompt: ``input_ids`` (``[length - max_new_tokens]``, or the facts alone when
    ``length == 0``), ``prompt`` its text, ``facts`` the woven facts with their positions."""

    task: str
    length: int
    index: int
    seed: int
    input_ids: np.ndarray
    prompt: str
    question: str
    answer: str
    facts: list[Insert]
    supporting: tuple[int, ...]
    story: int
    line: int
    max_new_tokens: int
    labels: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    @property
    def answers(self) -> list[str]:
        return [self.answer]

    def to_dict(self, with_ids: bool = False) -> dict:
        out = {
            "task": self.task,
            "length": self.length,
            "index": self.index,
            "seed": self.seed,
            "prompt": self.prompt,
            "question": self.question,
            "answer": self.answer,
            "facts": [f.to_dict() for f in self.facts],
            "supporting": list(self.supporting),
            "story": self.story,
            "line": self.line,
            "max_new_tokens": self.max_new_tokens,
        }
        if with_ids:
            out["input_ids"] = self.input_ids.tolist()
        return out


def babilong_sample(
    task: str,
    tokenizer: Tokenizer,
    length: int,
    index: int,
    *,
    seed: int = 0,
    split: str = "test",
    max_new_tokens: int = ANSWER_TOKENS,
    babi_dir: str | Path | None = None,
    skip_long: bool = True,
) -> BabiLongSample:
    """Sample ``index`` of ``task`` at ``length`` tokens (0 = facts only).

    A question whose facts and prompt do not fit in ``length`` is replaced by the next one in
    file order that does (``meta["skipped"]`` counts the questions passed over) when
    ``skip_long``; otherwise a ValueError names the length needed.
    """
    questions = load_babi(task, babi_dir)
    rng = make_rng(seed, "babilong", task, length, index)
    head_ids = prompt_head(tokenizer, "<context>\n")
    for skipped in range(len(questions)):
        q = questions[(index + skipped) % len(questions)]
        tail_ids = np.asarray(
            tokenizer.encode(f"\n</context>\n\nQuestion: {q.question}\nAnswer:"), dtype=np.int64
        )
        fact_ids = [encode_piece(tokenizer, f) for f in q.facts]
        fixed = len(head_ids) + len(tail_ids) + sum(len(f) for f in fact_ids)
        hay_tokens = length - max_new_tokens - fixed
        if length == 0 or hay_tokens >= 0:
            break
        if not skip_long:
            raise ValueError(
                f"length={length} is too short for {task} story {q.story} (its facts and question "
                f"take {fixed} tokens plus {max_new_tokens} to generate with {tokenizer.name}); "
                f"use length >= {fixed + max_new_tokens}, 0 for facts only, or skip_long=True"
            )
    else:
        raise ValueError(f"no {task} question fits in length={length}; use a longer length")
    if length == 0:
        hay: list[np.ndarray] = []
    else:
        pool = sentence_pool(tokenizer, split)
        hay = fill_tokens(cycle_pool(pool, int(rng.integers(len(pool)))), hay_tokens, tokenizer)
    # BABILong: facts go to random positions of the background, in their original order
    depths = np.sort(rng.uniform(0.0, 100.0, size=len(q.facts)))
    inserts = [(float(d), f, ids) for d, f, ids in zip(depths, q.facts, fact_ids)]
    ids, placed, meta = framed_prompt(tokenizer, head_ids, hay, inserts, tail_ids)
    return BabiLongSample(
        task=task,
        length=length,
        index=index,
        seed=seed,
        input_ids=ids,
        prompt=tokenizer.decode(ids),
        question=q.question,
        answer=q.answer,
        facts=placed,
        supporting=q.supporting,
        story=q.story,
        line=q.line,
        max_new_tokens=max_new_tokens,
        labels=babi_labels(task, babi_dir),
        meta={**meta, "skipped": skipped},
    )


def generate_babilong(
    task: str,
    tokenizer: Tokenizer,
    length: int,
    num_samples: int,
    *,
    seed: int = 0,
    split: str = "test",
    max_new_tokens: int = ANSWER_TOKENS,
    babi_dir: str | Path | None = None,
    start: int = 0,
    skip_long: bool = True,
) -> list[BabiLongSample]:
    """Samples ``start .. start + num_samples - 1`` of ``task`` at ``length`` tokens."""
    if split == "train":
        raise ValueError("background text must not come from the training split; use test")
    return [
        babilong_sample(
            task,
            tokenizer,
            length,
            i,
            seed=seed,
            split=split,
            max_new_tokens=max_new_tokens,
            babi_dir=babi_dir,
            skip_long=skip_long,
        )
        for i in range(start, start + num_samples)
    ]
