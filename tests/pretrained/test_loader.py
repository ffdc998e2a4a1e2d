"""The GGUF loader on a tiny synthetic Llama: mapping, Q/K permutation, tokenizer, run folder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")

from nestlearn.models import build_model  # noqa: E402
from nestlearn.pretrained import (  # noqa: E402
    load_gguf_llama,
    load_pretrained,
    permute_qk,
    tokenizer_from_gguf,
    unpermute_qk,
)
from tests.pretrained._tiny_gguf import (  # noqa: E402
    SPECIALS,
    TINY,
    gguf_row_order,
    hf_weights,
    reference_logits,
    write_tiny_gguf,
)

IDS = [5, 17, 200, 33, 3, 251, 90, 90, 12, 140, 7, 63, 255, 100, 41, 8, 9, 2, 77, 180, 66]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    w = hf_weights(seed=0)
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", w)
    return w, path


def test_permute_matches_llama_cpp_row_order_and_inverts():
    w = torch.arange(4 * 8 * 3, dtype=torch.float32).reshape(32, 3)
    order = gguf_row_order(4, 8)
    assert torch.equal(permute_qk(w, 4), w[order])
    assert torch.equal(unpermute_qk(permute_qk(w, 4), 4), w)
    with pytest.raises(ValueError, match="heads of even size"):
        unpermute_qk(w, 5)


def test_config_and_weights_are_mapped_exactly(tiny):
    w, path = tiny
    g = load_gguf_llama(path)
    c = g.config
    assert (c.family, c.n_layers, c.dim, c.n_heads, c.n_kv_heads) == ("transformer", 3, 48, 6, 2)
    assert (c.ffn_hidden, c.rope_base, c.norm_eps, c.max_seq_len) == (128, 1e5, 1e-5, 64)
    assert c.tie_embeddings and not c.rope_interleaved and c.vocab_size == len(w["embed"])
    s = g.state
    assert "head.weight" not in s
    assert np.array_equal(s["embed.weight"].numpy(), w["embed"])
    for i in range(3):  # Q/K back in the HF layout bit for bit; the rest copied as stored
        assert np.array_equal(s[f"blocks.{i}.mixer.wq.weight"].numpy(), w[f"{i}.q"])
        assert np.array_equal(s[f"blocks.{i}.mixer.wk.weight"].numpy(), w[f"{i}.k"])
        assert np.array_equal(s[f"blocks.{i}.mixer.wv.weight"].numpy(), w[f"{i}.v"])
        assert np.array_equal(s[f"blocks.{i}.ffn.w_down.weight"].numpy(), w[f"{i}.down"])
        assert np.array_equal(s[f"blocks.{i}.mixer_norm.weight"].numpy(), w[f"{i}.attn_norm"])


def test_logits_equal_independent_reference(tiny):
    w, path = tiny
    g = load_gguf_llama(path)
    model = build_model(g.config)
    model.load_state_dict(g.state, strict=False)
    with torch.no_grad():
        got = model(torch.tensor([IDS]))[0][0].double()
    ref = reference_logits(w, IDS)
    # our model runs in float32 (RMSNorm and RoPE in float32 by design); a wrong pairing or
    # head grouping would be off by O(1)
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-4)


def test_interleaved_rope_on_stored_rows_is_the_same_model(tiny):
    _, path = tiny
    g = load_gguf_llama(path)
    half = build_model(g.config)
    half.load_state_dict(g.state, strict=False)
    raw = dict(g.state)
    for i in range(TINY["n_layers"]):
        raw[f"blocks.{i}.mixer.wq.weight"] = permute_qk(raw[f"blocks.{i}.mixer.wq.weight"], 6)
        raw[f"blocks.{i}.mixer.wk.weight"] = permute_qk(raw[f"blocks.{i}.mixer.wk.weight"], 2)
    inter = build_model(dataclasses.replace(g.config, rope_interleaved=True))
    inter.load_state_dict(raw, strict=False)
    wrong = build_model(g.config)  # the GGUF rows with the half-split pairing: the trap
    wrong.load_state_dict(raw, strict=False)
    x = torch.tensor([IDS])
    with torch.no_grad():
        a, b, bad = half(x)[0], inter(x)[0], wrong(x)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert (a - bad).abs().max() > 1e-2


def test_q8_0_tensors_are_dequantised(tmp_path):
    w = hf_weights(seed=1, tied=False)
    g = load_gguf_llama(write_tiny_gguf(tmp_path / "q8.gguf", w, q8_down=True))
    assert g.tensor_types["blk.0.ffn_down.weight"] == "Q8_0"
    assert not g.config.tie_embeddings
    assert np.array_equal(g.state["head.weight"].numpy(), w["head"])
    down = g.state["blocks.0.ffn.w_down.weight"].numpy()
    err = np.abs(down - w["0.down"]).max()
    assert 0 < err < 0.01 * np.abs(w["0.down"]).max()  # 8-bit blocks: small, non-zero error


def test_bad_files_are_refused_with_the_reason(tmp_path):
    w = hf_weights()
    with pytest.raises(ValueError, match="only 'llama'"):
        load_gguf_llama(write_tiny_gguf(tmp_path / "a.gguf", w, arch="gpt2"))
    with pytest.raises(ValueError, match="blk.0.attn_q.bias"):
        load_gguf_llama(write_tiny_gguf(tmp_path / "b.gguf", w, extra_tensor="blk.0.attn_q.bias"))
    (tmp_path / "c.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_gguf_llama(tmp_path / "c.gguf")
    with pytest.raises(FileNotFoundError):
        load_gguf_llama(tmp_path / "missing.gguf")
    g = load_gguf_llama(write_tiny_gguf(tmp_path / "d.gguf", w, pre="qwen2"))
    with pytest.raises(ValueError, match="tokenizer.ggml.pre='qwen2'"):
        tokenizer_from_gguf(g.fields)


def test_tokenizer_rebuilt_from_metadata(tiny):
    _, path = tiny
    tok = tokenizer_from_gguf(load_gguf_llama(path).fields)
    enc = tok.encode("the 2024 theme<|endoftext|>")
    pieces = enc.tokens
    # merges apply ("Ġthe", "he"), digits are split one by one (smollm), specials stay whole
    assert pieces[:2] == ["t", "he"] and "Ġthe" in pieces
    assert ["2", "0", "2", "4"] == [p for p in pieces if p.isdigit()]
    assert pieces[-1] == "<|endoftext|>" and enc.ids[-1] == 0
    text = "Héllo wörld: 3.14 naïve\n\ttabs"
    assert tok.decode(tok.encode(text).ids) == text


def test_load_pretrained_gives_model_and_nestlearn_tokenizer(tiny):
    w, path = tiny
    pre = load_pretrained("smollm2-135m", gguf=path)
    assert pre.tokenizer.eos_id == SPECIALS.index("<|endoftext|>")
    assert pre.tokenizer.vocab_size == pre.model.cfg.vocab_size
    assert pre.provenance["metadata"]["llama.block_count"] == 3
    assert pre.tokenizer.decode(pre.tokenizer.encode("the theme")) == "the theme"
    assert not pre.model.training
