"""Tokenizers behind one small interface: bytes, the vendored BPE, or any local ``tokenizer.json``.

Names understood by :func:`get_tokenizer`:

* ``byte``: the 256 UTF-8 byte values (ids 0-255) plus ``<|bos|>`` = 256, ``<|eos|>`` = 257,
  ``<|pad|>`` = 258; ``vocab_size`` = 259. The vocabulary is not rounded up: a model that wants
  an embedding table padded to a multiple of 64 pads it itself and never sees ids >= 259.
* ``bpe-8192``: a byte-level BPE with 8192 ids (specials ``<|bos|>`` = 0, ``<|eos|>`` = 1,
  ``<|pad|>`` = 2) trained on the train split of the default corpus by
  ``scripts/train_tokenizer.py``; stored at ``nestlearn/assets/tokenizers/bpe-8192.json``.
* ``hf:PATH``: any Hugging Face ``tokenizers`` file (``tokenizer.json``, or a folder holding one):
  a byte-level BPE (GPT-2, ``nestlearn train-tokenizer``), a SentencePiece-style BPE with byte
  fallback (Llama's 32K vocabulary), a WordPiece, ...

Every tokenizer encodes text to plain ids: no special token is ever added by ``encode`` and none
is produced from the text itself (a literal ``"<|eos|>"`` in a document is encoded as ordinary
text), so documents can only be separated by the ``eos_id`` that :mod:`nestlearn.data.prepare`
writes. For the byte tokenizer and the byte-level BPE, ``decode(encode(s)) == s`` for every
string ``s``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

TOKENIZER_NAMES: tuple[str, ...] = ("byte", "bpe-8192", "hf:PATH")
"""The names :func:`get_tokenizer` accepts (``hf:PATH`` with a real path)."""

SPECIAL_TOKENS: tuple[str, ...] = ("<|bos|>", "<|eos|>", "<|pad|>")
"""The specials of ``byte`` and ``bpe-8192``, in this order."""

# Names tried, in order, when a foreign tokenizer.json does not use ours.
_EOS_CANDIDATES = ("<|eos|>", "<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")
_BOS_CANDIDATES = ("<|bos|>", "<|begin_of_text|>", "<s>", "<bos>", "<|im_start|>")
_PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]", "<|finetune_right_pad_id|>")


class Tokenizer(ABC):
    """The interface the rest of nestlearn uses.

    Attributes:
        name: the name :func:`get_tokenizer` was given (``byte``, ``bpe-8192``, ``hf:...``).
        vocab_size: number of ids, specials included; every id is in ``[0, vocab_size)``.
        bos_id, eos_id, pad_id: special ids (``eos_id`` separates documents in prepared data).
        sha256: fingerprint of the vocabulary; prepared data records it to detect a changed file.
    """

    name: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    sha256: str

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, with no special tokens added."""

    @abstractmethod
    def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special: bool = True) -> str:
        """Text of ``ids``; special ids are dropped when ``skip_special`` (the default)."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, possibly faster."""
        return [self.encode(t) for t in texts]

    def encode_arrays(
        self, texts: Sequence[str], dtype: np.dtype | type = np.int64
    ) -> list[np.ndarray]:
        """Like :meth:`encode_batch` but one 1-D array of ``dtype`` per text (the fast path)."""
        return [np.asarray(ids, dtype=dtype) for ids in self.encode_batch(texts)]

    @abstractmethod
    def token_bytes(self) -> list[bytes]:
        """The UTF-8 bytes each id stands for, ``[vocab_size]`` (``b""`` for specials).

        Exact even for ids that hold part of a multi-byte character (byte-level vocabularies),
        so ``sum(len(token_bytes()[i]) for i in encode(s)) == len(s.encode())``.
        """

    def token_byte_lengths(self) -> np.ndarray:
        """``len`` of each :meth:`token_bytes` entry, int64 ``[vocab_size]``, for bits per byte."""
        return np.array([len(b) for b in self.token_bytes()], dtype=np.int64)

    @property
    def token_dtype(self) -> np.dtype:
        """The smallest unsigned dtype that holds every id: uint16 below 65536 ids, else uint32."""
        return np.dtype(np.uint16) if self.vocab_size <= 65536 else np.dtype(np.uint32)

    def describe(self) -> dict[str, object]:
        """JSON-able summary recorded in prepared data's ``metadata.json``."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0-255, then ``<|bos|>`` 256, ``<|eos|>`` 257, ``<|pad|>`` 258."""

    def __init__(self) -> None:
        self.name = "byte"
        self.bos_id, self.eos_id, self.pad_id = 256, 257, 258
        self.vocab_size = 259
        self.sha256 = hashlib.sha256(b"nestlearn-byte-v1:bos=256,eos=257,pad=258").hexdigest()

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text`` as ints (``len`` = number of UTF-8 bytes)."""
        return list(text.encode("utf-8"))

    def encode_arrays(
        self, texts: Sequence[str], dtype: np.dtype | type = np.int64
    ) -> list[np.ndarray]:
        """One array per text straight from the UTF-8 buffer (no Python loop over bytes)."""
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(dtype) for t in texts]

    def token_bytes(self) -> list[bytes]:
        """``bytes([i])`` for ids 0-255, ``b""`` for the three specials."""
        return [bytes([i]) for i in range(256)] + [b""] * 3

    def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special: bool = True) -> str:
        """Bytes back to text; invalid UTF-8 (e.g. a cut multi-byte char) becomes U+FFFD."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = arr[(arr < 0) | (arr >= self.vocab_size)][0]
            raise ValueError(f"id {int(bad)} is outside the byte vocabulary [0, {self.vocab_size})")
        if skip_special:
            return bytes(arr[arr < 256].astype(np.uint8)).decode("utf-8", errors="replace")
        names = dict(zip((self.bos_id, self.eos_id, self.pad_id), SPECIAL_TOKENS))
        parts: list[str] = []
        start = 0
        for i in np.flatnonzero(arr >= 256):  # split the byte runs at each special
            parts.append(bytes(arr[start:i].astype(np.uint8)).decode("utf-8", errors="replace"))
            parts.append(names[int(arr[i])])
            start = i + 1
        parts.append(bytes(arr[start:].astype(np.uint8)).decode("utf-8", errors="replace"))
        return "".join(parts)


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` file (``tokenizer.json``) behind the nestlearn interface.

    Special tokens are looked up by name (ours first, then common ones such as
    ``<|endoftext|>`` and ``</s>``); a file with no recognisable end-of-text token is refused,
    since prepared data needs one between documents. A missing bos or pad falls back to eos.
    """

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        from tokenizers import Tokenizer as _HFTokenizer

        path = Path(path).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"no tokenizer file at {path}; give hf:PATH to a tokenizer.json "
                "(or to a folder that holds one)"
            )
        raw = path.read_bytes()
        spec = json.loads(raw)
        self._byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
        # SentencePiece-style vocabularies (Llama, Mistral, ...): "▁" stands for a space and
        # <0xNN> pieces for single bytes (byte fallback)
        self._metaspace = "\u2581" in json.dumps(spec.get("decoder"), ensure_ascii=False)
        self._byte_fallback = bool((spec.get("model") or {}).get("byte_fallback"))
        self.path = path
        self.name = name or f"hf:{path}"
        self.sha256 = hashlib.sha256(raw).hexdigest()
        self._tok = _HFTokenizer.from_str(raw.decode("utf-8"))
        # Text that happens to contain "<|eos|>" is encoded as text, never as the special id.
        self._tok.encode_special_tokens = True
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        vocab = self._tok.get_vocab(with_added_tokens=True)
        eos = _first_present(vocab, _EOS_CANDIDATES)
        if eos is None:
            raise ValueError(
                f"tokenizer {path} has none of the end-of-text tokens {list(_EOS_CANDIDATES)}; "
                "add one (e.g. tokenizer.add_special_tokens(['<|eos|>'])) and save it again"
            )
        self.eos_id = eos
        bos = _first_present(vocab, _BOS_CANDIDATES)
        pad = _first_present(vocab, _PAD_CANDIDATES)
        self.bos_id = eos if bos is None else bos  # id 0 is a valid special: no `or` here
        self.pad_id = eos if pad is None else pad
        self._special_ids = {
            i
            for t, i in vocab.items()
            if t in set(_EOS_CANDIDATES + _BOS_CANDIDATES + _PAD_CANDIDATES)
        }

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; the file's post-processor (e.g. an added BOS) is not applied."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Batch encoding in Rust, on several threads."""
        return [list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_arrays(
        self, texts: Sequence[str], dtype: np.dtype | type = np.int64
    ) -> list[np.ndarray]:
        """One array per text from the batched encoder (``encode_batch_fast`` where the
        installed ``tokenizers`` has it: the same ids, without computing character offsets)."""
        fast = getattr(self._tok, "encode_batch_fast", None) or self._tok.encode_batch
        encs = fast(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=dtype) for e in encs]

    def token_bytes(self) -> list[bytes]:
        """Bytes of each id: exact through the byte alphabet for byte-level files and through
        ``▁`` = space and ``<0xNN>`` = byte for SentencePiece-style (Llama) files, else each id
        decoded alone (exact for vocabularies whose pieces are whole characters)."""
        added = self._tok.get_added_tokens_decoder()
        out: list[bytes] = []
        inverse = _byte_level_inverse() if self._byte_level else None
        for i in range(self.vocab_size):
            if i in added:
                out.append(b"" if added[i].special else added[i].content.encode("utf-8"))
                continue
            piece = self._tok.id_to_token(i)
            if inverse is not None and piece is not None and all(c in inverse for c in piece):
                out.append(bytes(inverse[c] for c in piece))
            elif self._metaspace and piece is not None:
                m = _BYTE_PIECE.fullmatch(piece) if self._byte_fallback else None
                out.append(
                    bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode()
                )
            else:
                out.append(self._tok.decode([i], skip_special_tokens=False).encode("utf-8"))
        return out

    def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special: bool = True) -> str:
        """Text of ``ids`` (special ids dropped when ``skip_special``)."""
        seq = [int(i) for i in np.asarray(ids).reshape(-1)]
        if skip_special:
            seq = [i for i in seq if i not in self._special_ids]
        return self._tok.decode(seq, skip_special_tokens=skip_special)


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.lru_cache(maxsize=1)
def _byte_level_inverse() -> dict[str, int]:
    """GPT-2's byte -> printable character table, inverted (character -> byte)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _first_present(vocab: dict[str, int], candidates: Iterable[str]) -> int | None:
    for tok in candidates:
        if tok in vocab:
            return vocab[tok]
    return None


def bpe_path(vocab_size: int = 8192) -> Path:
    """Where the vendored byte-level BPE of ``vocab_size`` lives (it may not exist yet)."""
    return Path(
        str(resources.files("nestlearn") / "assets" / "tokenizers" / f"bpe-{vocab_size}.json")
    )


@functools.lru_cache(maxsize=4)
def _vendored_bpe(vocab_size: int) -> HFTokenizer:
    path = bpe_path(vocab_size)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; create it with scripts/train_tokenizer.py")
    return HFTokenizer(path, name=f"bpe-{vocab_size}")


def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called ``name``: ``byte``, ``bpe-8192`` or ``hf:PATH``.

    Raises:
        ValueError: unknown name (the message lists the choices).
        FileNotFoundError: ``hf:PATH`` does not exist, or the vendored BPE file is missing.
    """
    if name == "byte":
        return ByteTokenizer()
    if name == "bpe-8192":
        return _vendored_bpe(8192)
    if name.startswith("hf:") and len(name) > 3:
        return HFTokenizer(name[3:], name=name)
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZER_NAMES)}")
