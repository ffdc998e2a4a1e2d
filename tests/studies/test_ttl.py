"""Test-time-learning helpers: the level stream, decoding and option scoring against naive
references, the resumable cell store."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nestlearn.data import get_tokenizer
from nestlearn.models import build_model, preset_config
from nestlearn.studies.ttl import (
    CellStore,
    LevelStream,
    greedy,
    hope_periods,
    option_logprobs,
    prefill,
    window_ids,
)

TOK = get_tokenizer("byte")


def tiny(seed: int = 0):
    cfg = preset_config("transformer-tiny", vocab_size=TOK.vocab_size, dim=32, n_layers=2,
                        n_heads=2)  # fmt: skip
    return build_model(cfg, seed=seed).eval()


def test_hope_periods_and_window():
    assert hope_periods(2, [64, 256, 1024]) == (64, 256)
    try:
        hope_periods(4, [64, 256, 1024])
    except ValueError as e:
        assert "1 <= k <= 3" in str(e)
    else:
        raise AssertionError("Hope-4 with three periods was accepted")
    assert window_ids([[1, 2], [3, 4, 5], [6]], 4) == [3, 4, 5, 6]
    assert window_ids([[1, 2], [3, 4, 5], [6]], 3) == [6]


def test_stream_at_lr_zero_is_the_pretrained_model_and_learns_at_lr_one():
    model = tiny()
    ids = TOK.encode("the cat sees the dog. " * 4)
    s0 = LevelStream(model, (16, 32), 0.0, window=64, call_len=32)
    s0.read(ids)
    same = s0.snapshot()
    for (k, v), (k2, v2) in zip(model.state_dict().items(), same.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    s1 = LevelStream(model, (16, 32), 1.0, window=64, call_len=32)
    s1.read(ids)
    fast = s1.snapshot()
    assert s1.tokens_read == 96  # 88 tokens padded to the 16-token grid
    moved = [k for k, v in fast.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert moved and all(".ffn." in k for k in moved)
    x = torch.tensor([ids])
    with torch.no_grad():
        before = F.cross_entropy(model(x)[0][0, :-1], x[0, 1:])
        after = F.cross_entropy(fast(x)[0][0, :-1], x[0, 1:])
    assert after < before  # the levels learned the text they read


def test_read_chains_targets_across_calls():
    s = LevelStream(tiny(), (16,), 1.0, window=64, call_len=32)
    s.read([1, 2])
    s.read([3])
    assert s.pending == [(1, 2), (2, 3), (3, -100)]
    s.read([4, 5], targets=[-100, -100])
    assert s.pending[2:] == [(3, -100), (4, -100), (5, -100)]  # explicit targets: as given
    s = LevelStream(tiny(), (16,), 1.0, window=64, call_len=16)
    s.read(list(range(16)))
    assert len(s.pending) == 16 and s.tokens_read == 0  # the last token waits for its target
    s.read([16])
    assert s.tokens_read == 16 and s.pending == [(16, -100)]


def test_greedy_and_option_scores_equal_full_recomputation():
    model = tiny(1)
    ctx, prompt = TOK.encode("some context "), TOK.encode("Q: x\nA:")
    state = prefill(model, ctx, chunk=5)
    out = greedy(model, state, prompt, 6)
    seq = ctx + prompt
    for _ in range(6):
        with torch.no_grad():
            seq.append(int(model(torch.tensor([seq]))[0][0, -1].argmax()))
    assert out == seq[len(ctx) + len(prompt) :]
    stop = {out[2]}
    assert greedy(model, state, prompt, 6, stop) == out[: out.index(out[2])]
    opts = [TOK.encode(" ab"), TOK.encode(" c")]
    got = option_logprobs(model, state, prompt, opts)
    for o, g in zip(opts, got):
        full = torch.tensor([ctx + prompt + o])
        with torch.no_grad():
            lp = F.log_softmax(model(full)[0][0].float(), -1)
        n = len(ctx) + len(prompt)
        want = sum(float(lp[n - 1 + i, t]) for i, t in enumerate(o))
        assert abs(g - want) < 1e-4


def test_cell_store_reuses_only_same_settings(tmp_path):
    a = CellStore(tmp_path, {"x": (1, 2)})
    a.put("c", {"v": 3})
    assert CellStore(tmp_path, {"x": [1, 2]}).get("c")["v"] == 3
    assert CellStore(tmp_path, {"x": [1, 3]}).get("c") is None
    assert CellStore(tmp_path, {"x": [1, 3], "y": 0}).get("c", keys=["y"]) is None
    assert CellStore(tmp_path, {"x": [1, 3]}).get("c", keys=[])["v"] == 3
    (tmp_path / "cells" / "c.json").write_text("{broken")
    assert a.get("c") is None
