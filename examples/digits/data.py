"""scikit-learn's bundled digits: 1,797 real 8x8 images of handwritten digits, offline.

The images are UCI's "Optical Recognition of Handwritten Digits" test set as
scikit-learn ships it (``sklearn.datasets.load_digits``): grey levels 0..16.
The model takes them exactly so (float32, shape ``(batch, 8, 8)``) and scales
them itself, so a client sends ``digits.images`` as they are.

:func:`held_out_split` is the one split used at training time and when the
held-out images are classified through the server later: same seed, same
images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DigitsSplit", "held_out_split", "load_images"]

SEED = 1797
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class DigitsSplit:
    """Images (float32, 0..16) and labels (int64) of each part of the split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    validation_images: np.ndarray
    validation_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    seed: int

    def describe(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "stratified_by": ["label"],
            "test_fraction": TEST_FRACTION,
            "validation_fraction": VALIDATION_FRACTION,
            "train": len(self.train_labels),
            "validation": len(self.validation_labels),
            "test": len(self.test_labels),
        }


def load_images() -> tuple[np.ndarray, np.ndarray]:
    """All images as float32 ``(1797, 8, 8)`` in 0..16 and their labels 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def held_out_split(seed: int = SEED) -> DigitsSplit:
    """Stratified train / validation / test split of the images, fixed by ``seed``."""
    from sklearn.model_selection import train_test_split

    images, labels = load_images()
    rest_x, test_x, rest_y, test_y = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=seed
    )
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x,
        rest_y,
        test_size=VALIDATION_FRACTION / (1 - TEST_FRACTION),
        stratify=rest_y,
        random_state=seed,
    )
    return DigitsSplit(train_x, train_y, val_x, val_y, test_x, test_y, seed)
