import tracemalloc

import numpy as np
import pytest

from tfhash.data import load_digits
from tfhash.neighbours import batch_similarity, knn, neighbour_structure, second_order


def _dense_reference(features, k1, k2):
    """Obviously correct and O(n^2): full distances, indicator matrix, row overlaps."""
    x = features.astype(np.float64)
    n = len(x)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    first = np.array([sorted(range(n), key=lambda j: (d[i, j], j))[:k1] for i in range(n)])
    s1 = np.zeros((n, n), int)
    s1[np.arange(n)[:, None], first] = 1
    # ||S_i - S_j||^2 = 2 k1 - 2 overlap: closest rows = most shared neighbours (> 0).
    overlap = s1 @ s1.T
    second = np.full((n, k2), -1)
    for i in range(n):
        ranked = [j for j in sorted(range(n), key=lambda j: (-overlap[i, j], j)) if j != i and overlap[i, j] > 0]
        second[i, : len(ranked[:k2])] = ranked[:k2]
    return first, second


def test_knn_and_second_order_match_the_dense_reference():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(150, 5)).astype(np.float32)
    first, second = _dense_reference(features, k1=6, k2=8)
    np.testing.assert_array_equal(knn(features, 6, batch_size=32), first)
    np.testing.assert_array_equal(second_order(first, 8, batch_size=32), second)
    both = neighbour_structure(features, k1=6, k2=8, batch_size=32)
    np.testing.assert_array_equal(both, np.concatenate([first, second], axis=1))


def test_golden_line_of_points():
    # Points 0, 1, 2, 10, 11 on a line, k1 = 1: nearest of 0 is 1, of 1 is 0 (tie with 2,
    # smaller index), of 2 is 1, of 10 is 11, of 11 is 10.
    features = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]], np.float32)
    first = knn(features, 1)
    np.testing.assert_array_equal(first[:, 0], [1, 0, 1, 4, 3])
    # Second order: items sharing i's neighbour. 0 and 2 both have neighbour 1.
    np.testing.assert_array_equal(second_order(first, 2), [[2, -1], [-1, -1], [0, -1], [-1, -1], [-1, -1]])


def test_batch_similarity_is_symmetric_plus_minus_one():
    ids = np.array([5, 7, 9])
    neighbours = np.array([[7, -1], [-1, -1], [3, -1]])  # 5 ~ 7; 9 ~ 3 (3 not in batch)
    s = np.asarray(batch_similarity(ids, neighbours))
    # 5~7 from row 5's list, 7~5 by symmetry; nobody is their own neighbour: -1 on the diagonal.
    np.testing.assert_array_equal(s, [[-1, 1, -1], [1, -1, -1], [-1, -1, -1]])


def _peak_bytes(n):
    images, _ = load_digits()
    reps = -(-n // len(images))
    features = np.tile(images.reshape(len(images), -1).astype(np.float32), (reps, 1))[:n]
    features += np.random.default_rng(0).normal(size=features.shape).astype(np.float32)
    tracemalloc.start()
    result = neighbour_structure(features, k1=20, k2=30, batch_size=512)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.shape == (n, 50)
    return peak


def test_memory_does_not_grow_like_n_squared():
    # Doubling n would quadruple a dense n x n matrix; batched, the peak stays
    # about the same (it grows with batch_size * k1^2). 7,200 items dense: 207 MB.
    small, large = _peak_bytes(3600), _peak_bytes(7200)
    assert large < 1.5 * small, (small, large)
    assert large < 0.25 * 7200 * 7200 * 4, large


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 2\] for 3 items. Received: k=3"):
        knn(np.zeros((3, 2)), 3)
    with pytest.raises(ValueError, match="finite float array"):
        knn(np.array([[np.nan, 0.0], [1.0, 1.0]]), 1)
