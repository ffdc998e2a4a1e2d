"""scikit-learn's handwritten digits as a seeded train / validation / test split of tensors.

The data set (1,797 grey 8 x 8 images of the digits 0-9, pixel values 0-16, from the UCI
optical-recognition set) ships inside the scikit-learn wheel, so nothing is downloaded. It is
the image data behind ``nestlearn vit-optim`` (the Fig. 11 analogue of arXiv 2512.24695 §9.7).

scikit-learn is an optional dependency (``pip install "nestlearn[vision]"``) and is imported
only when the data are loaded.

Axis legend: N images, H = W = 8 pixels, one grey channel.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["DIGITS_CLASSES", "DigitsSplit", "load_digits_split"]

DIGITS_CLASSES = 10
_N_IMAGES = 1797
_PIXEL_MAX = 16.0


class DigitsSplit(NamedTuple):
    """Images ``[N, 8, 8]`` float32 (scaled to [0, 1], then standardised with the training
    split's mean and standard deviation) and labels ``[N]`` int64 for each split, as numpy
    arrays (``data`` imports no torch; ``torch.from_numpy`` shares their memory)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "the digits data set comes with scikit-learn, which is not installed; "
            'install it with: pip install "nestlearn[vision]" (or pip install scikit-learn)'
        ) from e
    d = load_digits()
    return np.asarray(d.images, dtype=np.float32), np.asarray(d.target, dtype=np.int64)


def load_digits_split(
    seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2
) -> DigitsSplit:
    """The digits split into train / validation / test by a permutation drawn from ``seed``.

    Stratified: each class is permuted on its own and cut at the same fractions, so every split
    holds the ten digits in the data set's proportions. The same ``seed`` gives the same split
    on every machine (numpy's PCG64). Pixels are divided by 16, then standardised with the mean
    and standard deviation of the training images (one number each, not per pixel).
    """
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < frac < 1:
            raise ValueError(f"{name} must be in (0, 1), got {frac}")
    if val_fraction + test_fraction >= 0.9:
        raise ValueError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:.2f} leaves under 10% "
            "of the images for training; lower them (defaults 0.15 and 0.2)"
        )
    images, labels = _sklearn_digits()
    if images.shape != (_N_IMAGES, 8, 8):
        raise ValueError(f"unexpected digits data of shape {images.shape}; expected (1797, 8, 8)")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(DIGITS_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(idx) * test_fraction)
        n_val = round(len(idx) * val_fraction)
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    # Shuffle across classes so a split is not sorted by label.
    order = {k: rng.permutation(np.concatenate(v)) for k, v in parts.items()}
    x = images / _PIXEL_MAX
    mean, std = float(x[order["train"]].mean()), float(x[order["train"]].std())
    x = (x - mean) / std

    def pick(k: str) -> tuple[np.ndarray, np.ndarray]:
        return x[order[k]].astype(np.float32), labels[order[k]].copy()

    return DigitsSplit(*pick("train"), *pick("val"), *pick("test"))
