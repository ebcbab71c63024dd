"""Tests for the bundled digits data set (``symgrad.datasets``)."""

from __future__ import annotations

import numpy as np
import pytest

from symgrad.datasets import digits_split, load_digits, one_hot

# Measured from sklearn.datasets.load_digits (scikit-learn 1.9.1).
CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
PIXEL_SUM = 561718  # sum of all pixel values
WEIGHTED_PIXEL_SUM = 17660653  # sum over samples of X[i, j] * j (catches column permutations)
LABEL_SUM = 8070
# First indices returned by train_test_split(..., stratify=y, random_state=0).
TRAIN_HEAD = [1346, 295, 257, 385, 1640, 849, 640, 757, 591, 158]
TEST_HEAD = [1496, 188, 705, 820, 413, 744, 1466, 500, 254, 1750]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return load_digits()


@pytest.fixture(scope="module")
def split() -> dict[str, np.ndarray]:
    return digits_split()


def test_load_digits_shapes_dtypes_ranges(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    assert X.shape == (1797, 64) and X.dtype == np.float64
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0 and X.max() == 16
    assert np.array_equal(X, np.round(X))
    assert set(np.unique(y)) == set(range(10))


def test_class_counts(data: tuple[np.ndarray, np.ndarray]) -> None:
    assert np.bincount(data[1], minlength=10).tolist() == CLASS_COUNTS


def test_checksums(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    Xi = X.astype(np.int64)
    assert int(Xi.sum()) == PIXEL_SUM
    assert int((Xi * np.arange(64)).sum()) == WEIGHTED_PIXEL_SUM
    assert int(y.sum()) == LABEL_SUM


def test_split_sizes_dtypes(split: dict[str, np.ndarray]) -> None:
    assert split["X_train"].shape == (1437, 64) and split["X_test"].shape == (360, 64)
    assert split["y_train"].shape == (1437,) and split["y_test"].shape == (360,)
    assert split["Y_train"].shape == (1437, 10) and split["Y_test"].shape == (360, 10)
    for k in ("X_train", "X_test", "Y_train", "Y_test"):
        assert split[k].dtype == np.float64
    assert split["y_train"].dtype == np.int64 and split["y_test"].dtype == np.int64
    assert split["X_train"].min() == 0 and split["X_train"].max() == 1


def test_split_matches_full_data(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    s = digits_split(scale=False)
    Xs = np.concatenate([s["X_train"], s["X_test"]])
    ys = np.concatenate([s["y_train"], s["y_test"]])
    # Disjoint and covering: the split rows are a permutation of the full data set.
    full = sorted(map(tuple, np.column_stack([X, y]).astype(int).tolist()))
    part = sorted(map(tuple, np.column_stack([Xs, ys]).astype(int).tolist()))
    assert full == part


def test_split_indices_disjoint_covering() -> None:
    from symgrad.datasets import _load_npz

    d = _load_npz()
    tr, te = d["train_index"], d["test_index"]
    assert tr.dtype.kind == "i" and te.dtype.kind == "i"
    assert len(tr) == 1437 and len(te) == 360
    assert not set(tr.tolist()) & set(te.tolist())
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(1797))
    assert tr[:10].tolist() == TRAIN_HEAD and te[:10].tolist() == TEST_HEAD


def test_stratified(split: dict[str, np.ndarray]) -> None:
    test_counts = np.bincount(split["y_test"], minlength=10)
    train_counts = np.bincount(split["y_train"], minlength=10)
    assert (train_counts + test_counts).tolist() == CLASS_COUNTS
    assert np.all(np.abs(test_counts - 0.2 * np.array(CLASS_COUNTS)) <= 1)


def test_one_hot_in_split(split: dict[str, np.ndarray]) -> None:
    for part in ("train", "test"):
        Y, y = split[f"Y_{part}"], split[f"y_{part}"]
        assert np.all(Y.sum(axis=1) == 1)
        assert np.array_equal(Y.argmax(axis=1), y)


def test_dtype_and_scale_options() -> None:
    s = digits_split(dtype=np.float32, scale=False)
    assert s["X_train"].dtype == np.float32 and s["Y_test"].dtype == np.float32
    assert s["X_train"].max() == 16
    s2 = digits_split(dtype=np.float32)
    np.testing.assert_array_equal(s2["X_test"] * 16, s["X_test"])


def test_one_hot() -> None:
    Y = one_hot(np.array([2, 0, 1]), 3, np.int8)
    assert Y.dtype == np.int8
    assert Y.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert one_hot(np.array([], dtype=np.int64), 4).shape == (0, 4)
    with pytest.raises(ValueError):
        one_hot(np.array([0, 3]), 3)
    with pytest.raises(ValueError):
        one_hot(np.array([-1]), 3)
