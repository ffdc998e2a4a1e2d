"""scikit-learn's digits as a seeded, stratified train / validation / test split."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from nestlearn.data.digits import DIGITS_CLASSES, load_digits_split  # noqa: E402


def test_split_sizes_classes_and_standardisation() -> None:
    d = load_digits_split(seed=0)
    sizes = [len(d.y_train), len(d.y_val), len(d.y_test)]
    assert sum(sizes) == 1797
    assert sizes[2] == pytest.approx(0.2 * 1797, abs=10) and sizes[1] == pytest.approx(
        0.15 * 1797, abs=10
    )
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)):
        assert isinstance(x, np.ndarray) and x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (len(y), 8, 8)
        # stratified: every digit is in every split, in about the data set's proportion
        counts = np.bincount(y, minlength=DIGITS_CLASSES)
        assert counts.min() > 0 and np.abs(counts / len(y) - 0.1).max() < 0.02
        assert len(set(y[:20].tolist())) > 3  # shuffled across classes, not sorted by label
    # standardised with the training split's statistics
    assert abs(d.x_train.mean().item()) < 1e-5 and d.x_train.std().item() == pytest.approx(
        1, abs=1e-3
    )


def test_same_seed_same_split_other_seed_other_split() -> None:
    a, b, c = load_digits_split(seed=3), load_digits_split(seed=3), load_digits_split(seed=4)
    for ta, tb in zip(a, b):
        assert np.array_equal(ta, tb)
    assert not np.array_equal(a.y_train, c.y_train)
    # the three splits of one seed hold different images: no test image is in training
    train = {tuple(r) for r in a.x_train.reshape(len(a.x_train), -1).tolist()}
    test = [tuple(r) for r in a.x_test.reshape(len(a.x_test), -1).tolist()]
    # digits holds a few exact duplicate images; anything beyond that would be a leak
    assert sum(r in train for r in test) <= 3


@pytest.mark.parametrize("val, test", [(0.0, 0.2), (0.15, 1.0), (0.5, 0.45)])
def test_bad_fractions_are_refused(val: float, test: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        load_digits_split(val_fraction=val, test_fraction=test)


def test_without_scikit_learn_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import raises ImportError
    with pytest.raises(ImportError, match=r'pip install "nestlearn\[vision\]"'):
        load_digits_split()
