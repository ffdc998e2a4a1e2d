"""The one-file spec ``ops/selfmod/minimal.py`` equals the real Hope mixer (hope defaults).

The only end-to-end check of the selfmod op with the full strong-write rule (``exact_output``,
``hidden_chunk``, ``hidden_prior``) on: tests/ops/test_selfmod_ops.py compares chunk and naive
with it off, tests/ops/test_titans_exact.py checks the rule on a single Titans memory.
"""

from __future__ import annotations

import torch

from nestlearn.memory.self_modifying import SelfModifyingTitans
from nestlearn.models.config import ModelConfig
from nestlearn.models.families.hope import build_hope_block
from nestlearn.ops.selfmod.minimal import minimal_hope_block, minimal_selfmod_mixer


def test_minimal_equals_mixer() -> None:
    torch.manual_seed(0)
    # hope defaults, small chunks; T = 23 is a multiple of neither chunk size
    layer = SelfModifyingTitans(16, 2, chunk_size=4, proj_chunk_size=8).double()
    with torch.no_grad():  # random weights everywhere, so every path carries signal
        for name, p in layer.named_parameters():
            if "init" in name:
                continue
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    with torch.no_grad():
        y, _ = layer(x)
        y_min = minimal_selfmod_mixer(layer, x)
        layer.naive = True  # the per-token reference op inside the same layer
        y_naive, _ = layer(x)
    assert y.abs().max() > 1e-3
    torch.testing.assert_close(y_min, y, rtol=0, atol=1e-9)
    torch.testing.assert_close(y_min, y_naive, rtol=0, atol=1e-9)


def test_minimal_equals_hope_block() -> None:
    torch.manual_seed(1)
    cfg = ModelConfig(
        family="hope", vocab_size=32, dim=16, n_layers=1, n_heads=2, max_seq_len=64,
        mixer={"chunk_size": 4, "proj_chunk_size": 8,
               "cms": {"periods": (3, 5, 8), "hidden_mult": 1.0, "lr": 0.05, "lr_max": 0.2}},
    )  # fmt: skip
    block = build_hope_block(cfg, 0).double()
    with torch.no_grad():
        for name, p in block.named_parameters():
            if "init" in name:
                continue
            if "norm" in name:  # the block's norm gains are set by the model's init
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    with torch.no_grad():
        y, _ = block(x)
        y_min = minimal_hope_block(block, x)
        block.ffn.set_memory_frozen(True)  # the CMS's in-context writes must matter
        y_frozen, _ = block(x)
    assert (y - y_frozen).abs().max() > 1e-4
    torch.testing.assert_close(y_min, y, rtol=0, atol=1e-9)
