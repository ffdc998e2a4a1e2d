"""Formal-language recipe: set loss, exact-set recognition, Bin0/Bin1 scoring, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nestlearn.data.synthetic.formal import (
    FORMAL_LANGUAGES,
    encode_formal,
    formal_strings,
    formal_vocab,
)
from nestlearn.eval.formal import recognised, string_accuracy
from nestlearn.studies.formal import set_loss, train_formal
from nestlearn.studies.recall import default_recipe


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_set_loss_is_masked_binary_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    targets = (torch.rand(2, 4, 3, generator=g) > 0.5).double()
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    p = torch.sigmoid(logits[..., :3])
    bce = -(targets * p.log() + (1 - targets) * (1 - p).log())
    want = bce[mask].mean()
    assert set_loss(logits, targets, mask).item() == pytest.approx(want.item(), rel=1e-6)  # float32


def test_recognition_needs_every_real_position_right():
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    good = torch.tensor([[[3.0, -2.0], [-1.0, 4.0], [9.0, 9.0]]])  # padding is not judged
    assert recognised(good, targets, mask).tolist() == [True]
    bad = good.clone()
    bad[0, 1, 0] = 0.5
    assert recognised(bad, targets, mask).tolist() == [False]


class _Oracle(nn.Module):
    """Emits the true next-symbol sets (as +-5 logits), optionally wrong beyond ``cut`` symbols."""

    def __init__(self, language: str, cut: int | None = None) -> None:
        super().__init__()
        self.lang = FORMAL_LANGUAGES[language]
        self.inv = {i: c for c, i in formal_vocab(language).items() if len(c) == 1}
        self.cut = cut

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        k = len(self.lang.outputs)
        out = torch.full((*x.shape, k), -5.0)
        for n, row in enumerate(x.tolist()):
            s = "".join(self.inv[i] for i in row[1:] if i in self.inv)
            lab = torch.as_tensor(self.lang.labels(s)) * 10 - 5
            if self.cut is not None and len(s) > self.cut:
                lab[-1] = -lab[-1]  # wrong about the end of long strings
            out[n, : len(s) + 1] = lab
        return out, None


@pytest.mark.parametrize("language", sorted(FORMAL_LANGUAGES))
def test_string_accuracy_of_oracles(language):
    bin0 = encode_formal(language, formal_strings(language, 40, split="bin0"))
    bin1 = encode_formal(language, formal_strings(language, 40, split="bin1"))
    assert string_accuracy(_Oracle(language), bin0, batch_size=16) == 1.0
    assert string_accuracy(_Oracle(language), bin1, batch_size=16) == 1.0
    long_wrong = _Oracle(language, cut=max(len(s) for s in bin0.strings))
    assert string_accuracy(long_wrong, bin0, batch_size=16) == 1.0
    assert string_accuracy(long_wrong, bin1, batch_size=16) == 0.0


def test_transformer_learns_shuffle2_at_training_lengths():
    """Table 5 reports 100/100 for Transformers on Shuffle-2; 150 CPU steps reach Bin0."""
    cfg = default_recipe("shuffle2", steps=150)
    result = train_formal("shuffle2", cfg, num_train=2000, num_test=100)
    assert result.losses[-1] < 0.25 * result.losses[0]
    assert result.bin0 > 0.9, (result.bin0, result.bin1)
    assert 0.0 <= result.bin1 <= 1.0
    assert np.isfinite(result.losses).all()


@pytest.mark.slow
def test_transformer_learns_anbn_at_training_lengths():
    cfg = default_recipe("anbn", steps=300)
    result = train_formal("anbn", cfg, num_train=2000, num_test=200)
    assert result.bin0 > 0.9, (result.bin0, result.bin1)
