"""Rebuild a GGUF file's byte-level BPE tokenizer as a Hugging Face ``tokenizers`` file.

A GGUF of a BPE model (``tokenizer.ggml.model = "gpt2"``) stores the vocabulary
(``tokenizer.ggml.tokens``, in id order), the merge rules (``tokenizer.ggml.merges``,
``"a b"`` strings in priority order), each token's type (``tokenizer.ggml.token_type``; 3 =
control, i.e. a special token) and the name of the pre-tokenizer (``tokenizer.ggml.pre``). The
pre-tokenizer itself is code in llama.cpp, so each name is mapped here to the ``tokenizers``
pre-tokenizers that split text the same way.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRE_TOKENIZERS", "tokenizer_from_gguf"]

_CONTROL = 3

PRE_TOKENIZERS: tuple[str, ...] = ("smollm", "gpt-2", "default")
"""``tokenizer.ggml.pre`` values this module knows: ``smollm`` splits every digit on its own
before the GPT-2 byte-level split (SmolLM / SmolLM2); ``gpt-2`` and ``default`` are the plain
GPT-2 byte-level split."""


def tokenizer_from_gguf(fields: dict[str, Any]) -> Any:
    """A ``tokenizers.Tokenizer`` equal to the GGUF file's BPE tokenizer.

    Args:
        fields: the metadata of :func:`nestlearn.pretrained.gguf_llama.read_gguf`.
    Returns:
        a ``tokenizers.Tokenizer``; ``.to_str()`` gives the ``tokenizer.json`` text.
    Raises:
        ValueError: not a byte-level BPE, or a pre-tokenizer this module does not know.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = fields.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"tokenizer.ggml.model is {kind!r}; only byte-level BPE ('gpt2') tokenizers can be "
            "rebuilt from a GGUF file here"
        )
    pre = fields.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(
            f"tokenizer.ggml.pre={pre!r} is not known; supported: {', '.join(PRE_TOKENIZERS)}"
        )
    tokens: list[str] = list(fields["tokenizer.ggml.tokens"])
    merges: list[str] = list(fields.get("tokenizer.ggml.merges") or [])
    types: list[int] = list(fields.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("the GGUF vocabulary holds duplicate tokens; cannot build a BPE from it")
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep:
            raise ValueError(f"malformed merge rule {m!r} in tokenizer.ggml.merges")
        pairs.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    split = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), split]
        )
    else:
        tok.pre_tokenizer = split
    tok.decoder = decoders.ByteLevel()
    specials = [tokens[i] for i, t in enumerate(types) if int(t) == _CONTROL]
    if specials:
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok
