"""Chunk-group recompute at model level (``model.mixer.recompute_group``, ``cms.recompute_group``).

Hope, Hope-Attention and Titans train to the same numbers with recompute on (several groups
per call) as with it off, float32, forward bit for bit and gradients to 1e-6, also when the state
is carried across calls (streaming); options that cannot act are refused.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nestlearn.memory.cms import ContinuumMemory
from nestlearn.models import ModelConfig, build_model


def _cfg(family: str, group: int | None, **extra) -> ModelConfig:
    mixer: dict = {"recompute_group": group, **extra}
    if family in ("hope", "hope-attention"):
        mixer.setdefault("cms", {"periods": (4, 8)})
    if family == "hope":
        mixer |= {"chunk_size": 4, "proj_chunk_size": 4}
    if family == "titans":
        mixer["chunk_size"] = 4
    return ModelConfig(family=family, vocab_size=40, dim=32, n_layers=2, n_heads=2,
                       max_seq_len=64, mixer=mixer)  # fmt: skip


def _step(model, idx: torch.Tensor, state=None):
    logits, st = model(idx, state=state, return_state=state is not None)
    loss = F.cross_entropy(logits.flatten(0, 1)[:-1], idx.flatten()[1:])
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, st


@pytest.mark.parametrize("family", ["hope", "hope-attention", "titans"])
def test_recompute_trains_to_the_same_numbers(family: str) -> None:
    idx = torch.randint(0, 40, (2, 37), generator=torch.Generator().manual_seed(0))
    plain = build_model(_cfg(family, 0), seed=1)
    grouped = build_model(_cfg(family, 2), seed=1)
    cms = [m for m in grouped.modules() if isinstance(m, ContinuumMemory)]
    assert all(m.cfg.recompute_group == 2 for m in cms)  # the block's setting reaches the CMS
    loss_a, ga, _ = _step(plain, idx)
    loss_b, gb, _ = _step(grouped, idx)
    assert torch.equal(loss_a, loss_b)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-6, atol=1e-6, msg=n)


@pytest.mark.parametrize("family", ["hope", "titans"])
def test_recompute_with_a_carried_state(family: str) -> None:
    """Streaming: the second call starts mid-chunk from the first call's state."""
    idx = torch.randint(0, 40, (2, 30), generator=torch.Generator().manual_seed(1))
    out = []
    for group in (0, 3):
        model = build_model(_cfg(family, group), seed=2)
        _, st = model(idx[:, :11], state=model.init_state(2), return_state=True)
        out.append(_step(model, idx[:, 11:], state=st))
    (la, ga, _), (lb, gb, _) = out
    assert torch.equal(la, lb)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-6, atol=1e-6, msg=n)


def test_cms_field_overrides_the_block_and_bad_values_are_refused() -> None:
    model = build_model(_cfg("hope", 8, cms={"periods": (4, 8), "recompute_group": 0}))
    assert all(m.cfg.recompute_group == 0 for m in model.modules()
               if isinstance(m, ContinuumMemory))  # fmt: skip
    with pytest.raises(ValueError, match="recompute_group"):
        build_model(_cfg("titans", -1))
    with pytest.raises(ValueError, match="recompute_group"):
        build_model(_cfg("hope", 8, cms={"mode": "static", "recompute_group": 4}))
    with pytest.raises(ValueError, match="in-context CMS levels"):
        build_model(_cfg("hope-attention", 4, cms={"mode": "static"}))
    # the default on a static CMS builds (nothing to recompute there)
    build_model(_cfg("hope", 8, cms={"mode": "static"}))
