"""The transformers wrapper with CMS ``objective=ntp`` (exact driver) and ``mode=outer``."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

import nestlearn.hf as H  # noqa: E402
from nestlearn.models import build_model, frozen_memory, preset_config  # noqa: E402
from nestlearn.models.generation import generate as native_generate  # noqa: E402

V = 259


def _tiny(**cms) -> torch.nn.Module:
    cfg = preset_config(
        "hope-attention-tiny", vocab_size=V, dim=32, n_layers=2, n_heads=2, mixer={"cms": cms}
    )
    return build_model(cfg, seed=3).eval()


def test_forward_and_generate_run_the_exact_driver():
    lm = _tiny(objective="ntp", periods=[2, 4], lr=0.02, lr_max=0.05)
    hf = H.NestlearnForCausalLM.from_language_model(lm)
    idx = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, _ = lm(idx)
        with frozen_memory(lm):
            frozen, _ = lm(idx)
        assert (ref - frozen).abs().max() > 1e-4  # the levels learned from the prompt
        torch.testing.assert_close(hf(idx, use_cache=False).logits, ref)
        out = hf(idx)  # with a cache: the state holds the last token's pending term
        torch.testing.assert_close(out.logits, ref)
        assert out.cache.state.pending is not None
    nat, _ = native_generate(lm, idx, 6, temperature=0)
    assert torch.equal(hf.generate(idx, max_new_tokens=6, do_sample=False), nat)
    # without a cache generate() recomputes the whole context with the driver: same tokens
    assert torch.equal(hf.generate(idx, max_new_tokens=6, do_sample=False, use_cache=False), nat)


def test_beam_search_is_refused_with_the_alternatives():
    hf = H.NestlearnForCausalLM.from_language_model(_tiny(objective="ntp", periods=[2, 4]))
    idx = torch.randint(0, V, (1, 5), generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="num_beams=2: .* Use greedy or sampled"):
        hf.generate(idx, max_new_tokens=4, do_sample=False, num_beams=2)
    # the cache refuses any other regrouping of a pending state too
    with torch.no_grad():
        cache = hf(idx).cache
    with pytest.raises(ValueError, match="num_beams=1"):
        cache.reorder_cache(torch.tensor([0]))
    # several samples per prompt expand the prompt before the first forward: allowed
    out = hf.generate(idx, max_new_tokens=3, do_sample=True, num_return_sequences=2)
    assert out.shape == (2, 8)


def test_outer_mode_is_a_static_forward():
    """mode=outer has no per-sequence state: cache and no cache, decode and recompute agree."""
    lm = _tiny(mode="outer", periods=[2, 4])
    assert lm.init_state(1).layers[0][1] is None
    hf = H.NestlearnForCausalLM.from_language_model(lm)
    idx = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(3))
    nat, _ = native_generate(lm, idx, 5, temperature=0)
    assert torch.equal(hf.generate(idx, max_new_tokens=5, do_sample=False), nat)
    assert torch.equal(hf.generate(idx, max_new_tokens=5, do_sample=False, use_cache=False), nat)
