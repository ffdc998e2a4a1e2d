"""nestlearn.data: tokenizers, the embedded default corpus, corpus preparation, token datasets.

The trainer needs three calls::

    from nestlearn.data import default_corpus, get_tokenizer, TokenShards

    tok = get_tokenizer("byte")                          # or "bpe-8192", "hf:PATH"
    train = default_corpus("byte", "train")              # TokenShards, prepared + cached
    val = default_corpus("byte", "validation")
    x = train.get(start, seq_len + 1)                    # np.ndarray [seq_len + 1]
    own = TokenShards("data/my-run")                     # from `nestlearn prepare ... --out`

    from nestlearn.data.prepare import prepare          # the library form of `nestlearn prepare`

``data`` imports no model code.
"""

from nestlearn.data.corpus import (
    CORPUS_SPLITS,
    CorpusIntegrityError,
    corpus_documents,
    load_manifest,
)
from nestlearn.data.dataset import TokenShards, cache_root, default_corpus

# `prepare` itself is not re-exported: it would shadow the submodule nestlearn.data.prepare.
# The `nestlearn prepare` command (its flags and summary line) is nestlearn.cli.prepare.
from nestlearn.data.tokenizers import (
    TOKENIZER_NAMES,
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    get_tokenizer,
)

__all__ = [
    "CORPUS_SPLITS",
    "TOKENIZER_NAMES",
    "ByteTokenizer",
    "CorpusIntegrityError",
    "HFTokenizer",
    "TokenShards",
    "Tokenizer",
    "cache_root",
    "corpus_documents",
    "default_corpus",
    "get_tokenizer",
    "load_manifest",
]
