"""Bundled data sets, loadable with numpy alone.

``load_digits`` returns the UCI "Optical Recognition of Handwritten Digits" data
(E. Alpaydin and C. Kaynak, 1998; UCI Machine Learning Repository,
https://doi.org/10.24432/C50P49), licensed CC BY 4.0. The bundled copy is the one
scikit-learn ships as ``sklearn.datasets.load_digits``: 1,797 8x8 images with
pixel values 0..16. See ``symgrad/data/LICENSE-digits.txt``.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import numpy as np

__all__ = ["digits_split", "load_digits", "one_hot"]

N_CLASSES = 10


def _load_npz() -> dict[str, np.ndarray]:
    with (files("symgrad") / "data" / "digits.npz").open("rb") as fh, np.load(fh) as npz:
        return {k: npz[k] for k in npz.files}


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return ``(X, y)``: X float64 (1797, 64) with values 0..16 (unscaled), y int64 (1797,)."""
    d = _load_npz()
    return d["images"].astype(np.float64), d["labels"].astype(np.int64)


def one_hot(y: np.ndarray, classes: int = N_CLASSES, dtype: Any = np.float64) -> np.ndarray:
    """One-hot encode integer labels ``y`` in ``[0, classes)`` as an ``(len(y), classes)`` array."""
    y = np.asarray(y)
    if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= classes)):
        raise ValueError(f"labels must be a 1-d array of integers in [0, {classes})")
    out = np.zeros((y.shape[0], classes), dtype=dtype)
    out[np.arange(y.shape[0]), y] = 1
    return out


def digits_split(dtype: Any = np.float64, scale: bool = True) -> dict[str, np.ndarray]:
    """Return the fixed stratified 80/20 train/test split of the digits data.

    Keys: ``X_train``, ``y_train``, ``X_test``, ``y_test`` and one-hot ``Y_train``,
    ``Y_test``. X (scaled by 1/16 to ``[0, 1]`` when ``scale``) and Y have ``dtype``;
    y is int64. The split is ``train_test_split(..., test_size=0.2, stratify=y,
    random_state=0)`` as computed by scikit-learn and stored with the data.
    """
    d = _load_npz()
    X = d["images"].astype(dtype)
    if scale:
        X /= np.asarray(16, dtype=dtype)
    y = d["labels"].astype(np.int64)
    tr, te = d["train_index"].astype(np.intp), d["test_index"].astype(np.intp)
    return {
        "X_train": X[tr],
        "y_train": y[tr],
        "X_test": X[te],
        "y_test": y[te],
        "Y_train": one_hot(y[tr], N_CLASSES, dtype),
        "Y_test": one_hot(y[te], N_CLASSES, dtype),
    }
