"""Local tokenizer.json files (Llama-style SentencePiece BPE) and training a BPE of any size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nestlearn.cli import main
from nestlearn.data.bpe import train_tokenizer
from nestlearn.data.dataset import TokenShards
from nestlearn.data.prepare import prepare
from nestlearn.data.tokenizers import get_tokenizer

TEXT = "the cat ate the hat 🐋\nthe end"


def _llama_style(path: Path) -> Path:
    """A tiny tokenizer.json laid out like Llama's (SentencePiece BPE, byte fallback, ▁)."""
    letters = sorted(set("abcdefghijklmnopqrstuvwxyz"))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab |= {f"<0x{b:02X}>": 3 + b for b in range(256)}
    pieces = ["▁", *letters, "▁t", "he", "▁the", "at", "▁c", "▁h", "▁e", "en"]
    vocab |= {p: 259 + i for i, p in enumerate(pieces)}
    merges = [["▁", "t"], ["h", "e"], ["▁t", "he"], ["a", "t"], ["▁", "c"], ["▁", "h"],
              ["▁", "e"], ["e", "n"]]  # fmt: skip
    spec = {
        "version": "1.0",
        "added_tokens": [
            {
                "id": i,
                "content": c,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for c, i in (("<unk>", 0), ("<s>", 1), ("</s>", 2))
        ],  # fmt: skip
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            ],
        },
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },  # fmt: skip
    }
    path.write_text(json.dumps(spec, ensure_ascii=False))
    return path


def test_llama_style_tokenizer_json_prepares_with_exact_byte_counts(tmp_path):
    tok = get_tokenizer(f"hf:{_llama_style(tmp_path / 'tokenizer.json')}")
    assert (tok.eos_id, tok.bos_id) == (2, 1)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert {3 + b for b in "🐋\n".encode()} <= set(ids)  # byte fallback pieces
    lengths = tok.token_byte_lengths()
    # the normalizer's leading ▁ is one byte more than the text
    assert int(lengths[ids].sum()) == len(TEXT.encode()) + 1
    (tmp_path / "d.txt").write_text(TEXT)
    meta = prepare([tmp_path / "d.txt"], tmp_path / "out", f"hf:{tmp_path}", progress=False)
    assert meta["dtype"] == "uint16"
    assert TokenShards(tmp_path / "out").get(0, len(ids) + 1).tolist() == [*ids, 2]


def _texts(tmp_path: Path) -> Path:
    from nestlearn.data.corpus import corpus_documents

    docs = [t[:20_000] for _, t in corpus_documents("validation")]
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return f


def test_train_tokenizer_on_files_and_on_a_byte_folder_gives_the_same_bpe(tmp_path):
    src = _texts(tmp_path)
    a = train_tokenizer([src], tmp_path / "a.json", 600)
    assert a["vocab_size"] == 600 and a["documents"] == 9
    tok = get_tokenizer(f"hf:{a['path']}")
    assert tok.vocab_size == 600 and (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    text = "Round trip: ünïcode, 🐋, tabs\tand\r\nnewlines"
    assert tok.decode(tok.encode(text)) == text
    # a folder prepared with the byte tokenizer holds the same text
    prepare([src], tmp_path / "bytes", "byte", progress=False)
    b = train_tokenizer([tmp_path / "bytes"], tmp_path / "b", 600)
    assert Path(b["path"]).name == "tokenizer.json"
    assert b["sha256"] == a["sha256"]  # deterministic, and the same documents
    c = train_tokenizer([src], tmp_path / "c.json", 600, max_bytes=50_000)
    assert c["bytes"] <= 50_000 and c["sha256"] != a["sha256"]


def test_train_tokenizer_refusals(tmp_path):
    src = _texts(tmp_path)
    with pytest.raises(ValueError, match="must exceed 259"):
        train_tokenizer([src], tmp_path / "x.json", 200)
    prepare([src], tmp_path / "bpe", "bpe-8192", progress=False)
    with pytest.raises(ValueError, match="cannot be turned back into text"):
        train_tokenizer([tmp_path / "bpe"], tmp_path / "x.json", 600)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("abc abc")
    with pytest.raises(ValueError, match="smaller --vocab-size"):
        train_tokenizer([tiny], tmp_path / "x.json", 5000)


def test_train_tokenizer_command(tmp_path, capsys):
    src = _texts(tmp_path)
    out = tmp_path / "tok.json"
    assert main(["train-tokenizer", str(src), "--vocab-size", "512", "--out", str(out)]) == 0
    assert "vocab 512" in capsys.readouterr().out
    assert main(["prepare", str(src), "--out", str(tmp_path / "p"), "--tokenizer", f"hf:{out}",
                 "--no-progress", "--workers", "1"]) == 0  # fmt: skip
    assert TokenShards(tmp_path / "p").vocab_size == 512
    assert np.all(TokenShards(tmp_path / "p").get(0, 100) < 512)


@pytest.mark.slow
def test_train_tokenizer_on_corpus_reproduces_the_vendored_bpe(tmp_path):
    """About a minute: the one-command path gives bpe-8192 byte for byte."""
    from nestlearn.data.tokenizers import bpe_path

    info = train_tokenizer(["corpus"], tmp_path / "bpe.json", 8192)
    assert Path(info["path"]).read_bytes() == bpe_path(8192).read_bytes()
