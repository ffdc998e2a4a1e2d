"""Haystacks measured in tokens, and text woven into them at stated depths.

A long-context sample is built as token ids, piece by piece, so its length is exact for any
tokenizer: every piece (a corpus sentence, a needle, a bAbI fact) is encoded on its own with a
leading space, and the pieces are concatenated. The last haystack piece is cut to make the total
come out at the requested number of tokens.

The haystack text is the held-out ``test`` split of the embedded corpus by default (Austen's
*Persuasion*, *Macbeth*, *Twelfth Night*, State of the Union addresses 2015-2021; see
``docs/data.md``), never the training split, so a model trained on the default corpus has not
seen it. Whitespace is collapsed to single spaces, as RULER does with its essays.

Depth convention: an insert at depth ``d`` percent goes to the last sentence boundary at or
before ``d`` percent of the haystack's tokens (the Kamradt needle-in-a-haystack convention;
RULER uses ``d`` percent of the sentence count, which drifts when sentences differ in length).
``Insert.token_depth`` records the depth actually reached.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from nestlearn.data.corpus import corpus_documents
from nestlearn.data.tokenizers import Tokenizer

logger = logging.getLogger(__name__)

NOISE_UNIT = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
)
"""RULER's ``repeat`` haystack (and the pass-key task's): this unit repeated."""

MAX_PIECE_CHARS = 200
"""Longer sentences are split at spaces, so an insert lands within ~200 bytes (~50 BPE tokens) of its depth."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u2019\u201d)\]])\s+")


def split_sentences(text: str, max_chars: int = MAX_PIECE_CHARS) -> list[str]:
    """Whitespace-collapsed sentences of ``text``; sentences over ``max_chars`` are split at spaces."""
    flat = " ".join(text.split())
    out: list[str] = []
    for sent in _SENTENCE_END.split(flat):
        while len(sent) > max_chars:
            cut = sent.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            out.append(sent[:cut])
            sent = sent[cut:].lstrip()
        if sent:
            out.append(sent)
    return out


@functools.lru_cache(maxsize=4)
def corpus_sentences(split: str = "test") -> tuple[str, ...]:
    """All sentences of the corpus ``split``, document after document in manifest order."""
    out: list[str] = []
    for _, text in corpus_documents(split):
        out.extend(split_sentences(text))
    if not out:
        raise ValueError(f"corpus split {split!r} holds no text")
    return tuple(out)


@dataclass(frozen=True)
class SentencePool:
    """Sentences of a haystack source with their token ids (each encoded with a leading space)."""

    texts: tuple[str, ...]
    ids: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.texts)


_POOLS: dict[tuple[str, str, str], SentencePool] = {}


def encode_piece(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """Ids of ``" " + text`` as int64: how every inserted piece is tokenized."""
    return np.asarray(tokenizer.encode(" " + text), dtype=np.int64)


def sentence_pool(tokenizer: Tokenizer, source: str = "test") -> SentencePool:
    """The tokenized haystack source: a corpus split name, or ``"repeat"`` for RULER's noise.

    Cached per tokenizer (by name and vocabulary sha256) and source.
    """
    key = (tokenizer.name, getattr(tokenizer, "sha256", ""), source)
    pool = _POOLS.get(key)
    if pool is None:
        texts = (NOISE_UNIT,) if source == "repeat" else corpus_sentences(source)
        ids = tokenizer.encode_arrays([" " + t for t in texts], dtype=np.int64)
        pool = SentencePool(tuple(texts), tuple(ids))
        _POOLS[key] = pool
        logger.debug("tokenized %d haystack sentences of %r with %s", len(texts), source, key[0])
    return pool


def cycle_pool(pool: SentencePool, start: int) -> Iterator[np.ndarray]:
    """Pieces of ``pool`` from index ``start`` on, wrapping around forever."""
    i = start % len(pool)
    while True:
        yield pool.ids[i]
        i = (i + 1) % len(pool)


def fill_tokens(
    pieces: Iterable[np.ndarray], n_tokens: int, tokenizer: Tokenizer
) -> list[np.ndarray]:
    """Take pieces until they hold ``n_tokens`` ids; the last one is cut to land exactly.

    A cut that would split a UTF-8 character (byte-level tokenizers) is moved back, and the
    shortfall is made up with single-space tokens, so the returned ids always decode cleanly.
    Returns an empty list when ``n_tokens`` is 0.
    """
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    out: list[np.ndarray] = []
    have = 0
    it = iter(pieces)
    while have < n_tokens:
        piece = next(it, None)
        if piece is None:
            raise ValueError(
                f"the haystack source ran out after {have} of {n_tokens} tokens; "
                "use a shorter length or a larger source"
            )
        if len(piece) == 0:
            continue
        room = n_tokens - have
        if len(piece) > room:
            piece = _clean_cut(piece, room, tokenizer)
        out.append(piece)
        have += len(piece)
    return out


def _clean_cut(piece: np.ndarray, room: int, tokenizer: Tokenizer) -> np.ndarray:
    cut = piece[:room]
    keep = room
    # a byte-level cut inside a multi-byte character decodes to U+FFFD: back off (<= 3 bytes)
    while keep > 0 and "\ufffd" in tokenizer.decode(cut[:keep]) and room - keep < 4:
        keep -= 1
    if keep == room:
        return cut
    space = tokenizer.encode(" ")
    if len(space) != 1:
        return cut  # cannot pad by exactly one token; keep the raw cut
    return np.concatenate([cut[:keep], np.full(room - keep, space[0], dtype=np.int64)])


@dataclass
class Insert:
    """One piece of text woven into a haystack (a needle, a bAbI fact).

    Token positions index the sample's ``input_ids``; char positions index its ``prompt``.
    ``depth`` is the requested depth in percent of the haystack, ``token_depth`` the depth
    reached (percent of haystack tokens that precede the insert).
    """

    text: str
    depth: float
    token_start: int
    token_end: int
    token_depth: float
    char_start: int = -1
    char_end: int = -1

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def weave(
    haystack: Sequence[np.ndarray],
    inserts: Sequence[tuple[float, str, np.ndarray]],
) -> tuple[np.ndarray, list[Insert]]:
    """Interleave ``inserts`` (``(depth %, text, ids)``) into the ``haystack`` pieces.

    Each insert goes to the last piece boundary at or before ``depth`` percent of the
    haystack's tokens; inserts that land on the same boundary keep their given order.
    Returns ``(ids [L], inserts)`` with token positions relative to the start of ``ids``,
    listed in the order the inserts were given.
    """
    lengths = np.array([len(p) for p in haystack], dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    total = int(bounds[-1])
    slots: list[int] = []
    for depth, text, _ in inserts:
        if not 0.0 <= depth <= 100.0:
            raise ValueError(f"insert depth must be in [0, 100] percent, got {depth} for {text!r}")
        target = depth / 100.0 * total
        slots.append(int(np.searchsorted(bounds, target + 1e-9, side="right")) - 1)
    order = sorted(range(len(inserts)), key=lambda i: (slots[i], i))
    parts: list[np.ndarray] = []
    placed: dict[int, Insert] = {}
    pos = 0
    piece = 0
    for i in order:
        while piece < slots[i]:
            parts.append(haystack[piece])
            pos += len(haystack[piece])
            piece += 1
        depth, text, ids = inserts[i]
        parts.append(ids)
        before = int(bounds[slots[i]])
        placed[i] = Insert(
            text=text,
            depth=float(depth),
            token_start=pos,
            token_end=pos + len(ids),
            token_depth=100.0 * before / total if total else 0.0,
        )
        pos += len(ids)
    parts.extend(haystack[piece:])
    ids_all = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return ids_all.astype(np.int64), [placed[i] for i in range(len(inserts))]


def locate_chars(tokenizer: Tokenizer, ids: np.ndarray, inserts: Sequence[Insert]) -> None:
    """Fill ``char_start`` / ``char_end`` of each insert from prefix decodes of ``ids``."""
    for ins in inserts:
        ins.char_start = len(tokenizer.decode(ids[: ins.token_start]))
        ins.char_end = len(tokenizer.decode(ids[: ins.token_end]))


def prompt_head(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """A prompt's opening ids ``[H]``: end-of-text first (as documents start in training data)
    when the tokenizer has one, then ``text``."""
    prefix = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    return np.asarray(prefix + tokenizer.encode(text), dtype=np.int64)


def framed_prompt(
    tokenizer: Tokenizer,
    head: np.ndarray,
    haystack: Sequence[np.ndarray],
    inserts: Sequence[tuple[float, str, np.ndarray]],
    tail: np.ndarray,
) -> tuple[np.ndarray, list[Insert], dict]:
    """``head``, the ``haystack`` with ``inserts`` woven in (:func:`weave`), then ``tail``.

    Returns ``(ids [L], inserts, meta)``: the inserts' token and char positions index the whole
    prompt, and ``meta`` holds ``context_start`` / ``context_end`` (the woven haystack's span).
    """
    context, placed = weave(haystack, inserts)
    ids = np.concatenate([head, context, tail])
    for ins in placed:
        ins.token_start += len(head)
        ins.token_end += len(head)
    locate_chars(tokenizer, ids, placed)
    return ids, placed, {"context_start": len(head), "context_end": len(head) + len(context)}
