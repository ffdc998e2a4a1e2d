"""Every family's blocks keep the Mixer protocol (``nestlearn.layers.protocol``), and the
declared ``supports_naive`` of a family matches its mixers'."""

from __future__ import annotations

import inspect

import pytest
from torch import nn

from nestlearn.layers.protocol import Mixer, is_residual_out, mark_residual_out
from nestlearn.models import FAMILIES, PRESETS, ModelConfig, build_model, preset_config


def _cfg(family: str) -> ModelConfig:
    tiny = [p for p, c in PRESETS.items() if c["family"] == family and p.endswith(("-tiny", "-demo"))]
    if tiny:
        data = dict(PRESETS[sorted(tiny)[0]])
        data["vocab_size"] = 259
        return ModelConfig(**data)
    return ModelConfig(family=family, vocab_size=259, dim=64, n_layers=2, n_heads=2)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_blocks_keep_the_protocol(family: str) -> None:
    model = build_model(_cfg(family), meta=True)
    mixers = []
    for block in model.blocks:
        for mod in (block.mixer, block.ffn):
            if mod is None:
                continue
            assert isinstance(mod, Mixer), f"{family}: {type(mod).__name__} lacks a Mixer member"
            sig = inspect.signature(mod.flops_per_token)
            assert list(sig.parameters) == ["seq_len"], (family, type(mod).__name__, sig)
            assert isinstance(type(mod).__dict__.get("supports_naive", mod.supports_naive), bool)
        mixers.append(block.mixer)
    assert FAMILIES[family].supports_naive == any(m.supports_naive for m in mixers), family
    assert model.flops_per_token(64) > 0


def test_residual_outputs_are_tagged_not_named() -> None:
    """The residual scaling follows the tag: a Linear named ``wo`` without it gets ``init_std``."""
    model = build_model(preset_config("transformer-tiny", vocab_size=259), meta=True)
    tagged = {n for n, m in model.named_modules() if is_residual_out(m)}
    assert tagged == {f"blocks.{i}.{s}" for i in range(4) for s in ("mixer.wo", "ffn.w_down")}
    with pytest.raises(TypeError, match="nn.Linear"):
        mark_residual_out(nn.LayerNorm(4))  # type: ignore[type-var]
    lin = nn.Linear(4, 4)
    assert not is_residual_out(lin) and mark_residual_out(lin) is lin and is_residual_out(lin)
