"""Tokenizers: exact round trips, specials, batch paths, hf:PATH loading, byte accounting."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from nestlearn.data.tokenizers import (
    ByteTokenizer,
    HFTokenizer,
    bpe_path,
    get_tokenizer,
)

TEXTS = [
    "",
    "a",
    "Hello, world!",
    " leading and trailing spaces  ",
    "tabs\tand\r\nwindows\rnewlines\n\n\n",
    "naïve café résumé Ærøskøbing",
    "中文字符 日本語のテキスト 한국어",
    "emoji 👋🏽 👨‍👩‍👧‍👦 🇫🇷 and a combining e\u0301",
    "\x00 nul and \x7f del and \u200b zero width",
    "literal specials <|eos|> <|bos|> <|pad|> <|endoftext|>",
    "It's 1790; the year's revenue was $4,399,473.09 (approx.)",
    "x" * 5000,
]


@pytest.fixture(scope="module")
def bpe() -> HFTokenizer:
    tok = get_tokenizer("bpe-8192")
    assert isinstance(tok, HFTokenizer)
    return tok


def _random_text(rng: random.Random, n: int) -> str:
    """Random code points from ASCII, Latin-1, CJK and the astral planes (no surrogates)."""
    ranges = [(0x20, 0x7E), (0x0A, 0x0A), (0xA0, 0x17F), (0x4E00, 0x4FFF), (0x1F300, 0x1F6FF)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


@pytest.mark.parametrize("text", TEXTS)
def test_byte_round_trip_and_length(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert all(0 <= i < 256 for i in ids)


def test_byte_specials_and_vocab() -> None:
    tok = get_tokenizer("byte")
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (259, 256, 257, 258)
    assert tok.name == "byte"
    ids = [tok.bos_id, *tok.encode("hé"), tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "hé"
    assert tok.decode(ids, skip_special=False) == "<|bos|>hé<|eos|><|pad|>"
    with pytest.raises(ValueError, match="259"):
        tok.decode([300])
    with pytest.raises(ValueError, match="-1"):
        tok.decode([-1])


def test_byte_decode_of_cut_character_is_replacement() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("é")  # two bytes; keep only the first
    assert tok.decode(ids[:1]) == "\ufffd"


def test_byte_encode_arrays_matches_encode() -> None:
    tok = ByteTokenizer()
    arrays = tok.encode_arrays(TEXTS, dtype=np.uint16)
    assert [a.dtype for a in arrays] == [np.dtype(np.uint16)] * len(TEXTS)
    assert [a.tolist() for a in arrays] == [tok.encode(t) for t in TEXTS]
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_round_trip(bpe: HFTokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert all(0 <= i < bpe.vocab_size for i in ids)


def test_bpe_round_trip_random_unicode(bpe: HFTokenizer) -> None:
    rng = random.Random(0)
    texts = [_random_text(rng, rng.randint(0, 300)) for _ in range(200)]
    for text, ids in zip(texts, bpe.encode_batch(texts)):
        assert bpe.decode(ids) == text


def test_bpe_vocab_specials_and_literal_specials(bpe: HFTokenizer) -> None:
    assert bpe.vocab_size == 8192
    assert (bpe.bos_id, bpe.eos_id, bpe.pad_id) == (0, 1, 2)
    # Text that spells a special token is text, never a document boundary.
    ids = bpe.encode("before <|eos|> after <|bos|>")
    assert not {bpe.bos_id, bpe.eos_id, bpe.pad_id} & set(ids)
    assert bpe.decode([bpe.bos_id, *bpe.encode("hi"), bpe.eos_id]) == "hi"
    assert bpe.decode([bpe.bos_id, *bpe.encode("hi")], skip_special=False) == "<|bos|>hi"


def test_bpe_learned_english_merges(bpe: HFTokenizer) -> None:
    text = (
        "It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife."
    )
    # A byte-level BPE trained on English prose packs several bytes per token.
    assert len(bpe.encode(text)) * 3 < len(text.encode())
    assert len(bpe.encode(" the")) == 1


def test_bpe_batch_paths_match_single(bpe: HFTokenizer) -> None:
    assert bpe.encode_batch(TEXTS) == [bpe.encode(t) for t in TEXTS]
    arrays = bpe.encode_arrays(TEXTS, dtype=np.uint16)
    assert [a.tolist() for a in arrays] == [bpe.encode(t) for t in TEXTS]


@pytest.mark.parametrize("name", ["byte", "bpe-8192"])
def test_token_bytes_account_for_every_byte(name: str) -> None:
    tok = get_tokenizer(name)
    table = tok.token_bytes()
    lengths = tok.token_byte_lengths()
    assert len(table) == tok.vocab_size == len(lengths)
    assert lengths[tok.eos_id] == lengths[tok.bos_id] == lengths[tok.pad_id] == 0
    for text in TEXTS:
        ids = tok.encode(text)
        assert b"".join(table[i] for i in ids) == text.encode("utf-8")
        assert int(lengths[np.asarray(ids, dtype=np.int64)].sum()) == len(text.encode("utf-8"))


def test_bpe_sha_is_the_file_sha(bpe: HFTokenizer) -> None:
    assert bpe.sha256 == hashlib.sha256(bpe_path(8192).read_bytes()).hexdigest()
    assert bpe.token_dtype == np.dtype(np.uint16)


def test_hf_path_loads_file_and_folder(tmp_path: Path, bpe: HFTokenizer) -> None:
    shutil.copy(bpe_path(8192), tmp_path / "tokenizer.json")
    by_file = get_tokenizer(f"hf:{tmp_path / 'tokenizer.json'}")
    by_dir = get_tokenizer(f"hf:{tmp_path}")
    text = "Call me Ishmael. 👋"
    assert by_file.encode(text) == by_dir.encode(text) == bpe.encode(text)
    assert by_dir.name == f"hf:{tmp_path}"
    assert by_dir.sha256 == bpe.sha256


def test_hf_tokenizer_without_eos_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="end-of-text"):
        HFTokenizer(tmp_path)


def test_hf_gpt2_style_eos_is_found(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    vocab = {"a": 0, "b": 1, "[UNK]": 2, "<|endoftext|>": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(tmp_path / "t.json"))
    loaded = HFTokenizer(tmp_path / "t.json")
    assert loaded.eos_id == loaded.bos_id == loaded.pad_id == 3  # bos/pad fall back to eos


def test_unknown_and_missing_names() -> None:
    with pytest.raises(ValueError, match="byte, bpe-8192, hf:PATH"):
        get_tokenizer("gpt2")
    with pytest.raises(ValueError, match="choose one of"):
        get_tokenizer("hf:")
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        get_tokenizer("hf:/nonexistent/tokenizer.json")


def test_describe_is_json(bpe: HFTokenizer) -> None:
    d = json.loads(json.dumps(bpe.describe()))
    assert d["name"] == "bpe-8192" and d["vocab_size"] == 8192 and d["eos_id"] == 1
