"""A tiny Llama GGUF written with ``gguf.GGUFWriter``, and an independent float64 reference.

The weights are made in the Hugging Face layout (RoPE pairs ``(i, i + Dh/2)``); before writing,
Q and K rows are reordered the way llama.cpp's converter does (spelled out here with an explicit
index loop, not with the loader's own function). The reference forward below is a plain
per-head implementation of Llama on the HF-layout weights; the loader must reproduce it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

TINY = dict(
    n_layers=3, dim=48, n_heads=6, n_kv=2, ffn=128, base=1e5, eps=1e-5, ctx=64
)  # fmt: skip
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n"]


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def vocab() -> list[str]:
    toks = SPECIALS + byte_alphabet()
    for m in MERGES:
        toks.append(m.replace(" ", ""))
    return toks


def gguf_row_order(n_heads: int, head_dim: int) -> list[int]:
    """For each GGUF row, the HF row it holds: per head, 0, Dh/2, 1, Dh/2 + 1, ..."""
    order = []
    for h in range(n_heads):
        for i in range(head_dim // 2):
            order += [h * head_dim + i, h * head_dim + head_dim // 2 + i]
    return order


def hf_weights(seed: int = 0, tied: bool = True) -> dict[str, np.ndarray]:
    """Random float32 weights under HF-style names (``[out, in]`` matrices)."""
    c = TINY
    rng = np.random.default_rng(seed)
    V, D, F = len(vocab()), c["dim"], c["ffn"]
    hd = D // c["n_heads"]

    def mat(o: int, i: int) -> np.ndarray:
        return (rng.standard_normal((o, i)) / math.sqrt(i)).astype(np.float32)

    def gain(n: int) -> np.ndarray:
        return (1.0 + 0.3 * rng.standard_normal(n)).astype(np.float32)

    w = {"embed": (0.5 * rng.standard_normal((V, D))).astype(np.float32), "norm": gain(D)}
    if not tied:
        w["head"] = mat(V, D)
    for i in range(c["n_layers"]):
        w |= {
            f"{i}.attn_norm": gain(D), f"{i}.q": mat(c["n_heads"] * hd, D),
            f"{i}.k": mat(c["n_kv"] * hd, D), f"{i}.v": mat(c["n_kv"] * hd, D),
            f"{i}.o": mat(D, c["n_heads"] * hd), f"{i}.ffn_norm": gain(D),
            f"{i}.gate": mat(F, D), f"{i}.up": mat(F, D), f"{i}.down": mat(D, F),
        }  # fmt: skip
    return w


def write_tiny_gguf(
    path: Path, w: dict[str, np.ndarray], *, arch: str = "llama", q8_down: bool = False,
    extra_tensor: str | None = None, pre: str = "smollm",
) -> Path:  # fmt: skip
    """Write ``w`` as a llama GGUF (Q/K rows in GGUF order); ``q8_down`` stores the FFN down
    projections as Q8_0 to exercise dequantisation."""
    import gguf

    c = TINY
    hd = c["dim"] // c["n_heads"]
    toks = vocab()
    wr = gguf.GGUFWriter(str(path), arch=arch)
    wr.add_block_count(c["n_layers"])
    wr.add_context_length(c["ctx"])
    wr.add_embedding_length(c["dim"])
    wr.add_feed_forward_length(c["ffn"])
    wr.add_head_count(c["n_heads"])
    wr.add_head_count_kv(c["n_kv"])
    wr.add_rope_freq_base(c["base"])
    wr.add_rope_dimension_count(hd)
    wr.add_layer_norm_rms_eps(c["eps"])
    wr.add_vocab_size(len(toks))
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre(pre)
    wr.add_token_list(toks)
    wr.add_token_types([3] * len(SPECIALS) + [1] * (len(toks) - len(SPECIALS)))
    wr.add_token_merges(MERGES)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    q_order = gguf_row_order(c["n_heads"], hd)
    k_order = gguf_row_order(c["n_kv"], hd)
    wr.add_tensor("token_embd.weight", w["embed"])
    wr.add_tensor("output_norm.weight", w["norm"])
    if "head" in w:
        wr.add_tensor("output.weight", w["head"])
    for i in range(c["n_layers"]):
        b = f"blk.{i}."
        wr.add_tensor(b + "attn_norm.weight", w[f"{i}.attn_norm"])
        wr.add_tensor(b + "attn_q.weight", np.ascontiguousarray(w[f"{i}.q"][q_order]))
        wr.add_tensor(b + "attn_k.weight", np.ascontiguousarray(w[f"{i}.k"][k_order]))
        wr.add_tensor(b + "attn_v.weight", w[f"{i}.v"])
        wr.add_tensor(b + "attn_output.weight", w[f"{i}.o"])
        wr.add_tensor(b + "ffn_norm.weight", w[f"{i}.ffn_norm"])
        wr.add_tensor(b + "ffn_gate.weight", w[f"{i}.gate"])
        wr.add_tensor(b + "ffn_up.weight", w[f"{i}.up"])
        down = w[f"{i}.down"]
        if q8_down:
            q = gguf.quants.quantize(down, gguf.GGMLQuantizationType.Q8_0)
            wr.add_tensor(b + "ffn_down.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            wr.add_tensor(b + "ffn_down.weight", down)
    if extra_tensor:
        wr.add_tensor(extra_tensor, np.zeros(c["dim"], dtype=np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path


def reference_logits(w: dict[str, np.ndarray], ids: list[int]) -> torch.Tensor:
    """Llama forward in float64 on HF-layout weights, one head at a time: ``[T, V]``."""
    c = TINY
    W = {k: torch.from_numpy(v).double() for k, v in w.items()}
    D, H, G = c["dim"], c["n_heads"], c["n_kv"]
    hd = D // H
    T = len(ids)

    def rms(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c["eps"]) * g

    inv = c["base"] ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rope(x: torch.Tensor) -> torch.Tensor:  # x: [T, hd], HF half split
        rot = torch.cat([-x[:, hd // 2 :], x[:, : hd // 2]], -1)
        return x * cos + rot * sin

    mask = torch.ones(T, T, dtype=torch.bool).tril()
    x = W["embed"][torch.tensor(ids)]
    for i in range(c["n_layers"]):
        h = rms(x, W[f"{i}.attn_norm"])
        q, k, v = h @ W[f"{i}.q"].T, h @ W[f"{i}.k"].T, h @ W[f"{i}.v"].T
        heads = []
        for j in range(H):
            g = j // (H // G)
            qj = rope(q[:, j * hd : (j + 1) * hd])
            kj = rope(k[:, g * hd : (g + 1) * hd])
            s = (qj @ kj.T / math.sqrt(hd)).masked_fill(~mask, float("-inf"))
            heads.append(s.softmax(-1) @ v[:, g * hd : (g + 1) * hd])
        x = x + torch.cat(heads, -1) @ W[f"{i}.o"].T
        h = rms(x, W[f"{i}.ffn_norm"])
        gate = h @ W[f"{i}.gate"].T
        x = x + (gate * torch.sigmoid(gate) * (h @ W[f"{i}.up"].T)) @ W[f"{i}.down"].T
    head = W.get("head", W["embed"])
    return rms(x, W["norm"]) @ head.T
