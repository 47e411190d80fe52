"""Tests for tfhash.baselines: code format, the ITQ and CCA math on data with a
known answer, retrieval on real data (sklearn's bundled digits), and errors."""

import numpy as np
import pytest
import scipy.sparse
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError

from tfhash import metrics
from tfhash.baselines import CCAITQ, ITQ, LSH


@pytest.fixture(scope="module")
def digits():
    """1,797 8x8 digit images (pixels 0..16), 10 balanced classes, split into
    300 queries and a 1,497-image database (also the training set)."""
    images, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(images))
    query, database = order[:300], order[300:]
    return images, labels, query, database


def _halves(images):
    """Left and right 4 columns of each 8x8 image: two 32-d "modalities"."""
    grid = images.reshape(-1, 8, 8)
    return grid[:, :, :4].reshape(-1, 32), grid[:, :, 4:].reshape(-1, 32)


def _map(query_codes, database_codes, query_labels, database_labels):
    return metrics.mean_average_precision(
        query_codes, database_codes, query_labels, database_labels
    )


# --------------------------------------------------------------------------
# Code format: packed sign bits, as SignPack and tfhash.metrics expect.
# --------------------------------------------------------------------------


def test_codes_are_packbits_of_the_signs(digits):
    images, _, _, _ = digits
    left, right = _halves(images)
    lsh = LSH(16, seed=0).fit(images)
    itq = ITQ(16, seed=0).fit(images)
    cca = CCAITQ(16, seed=0).fit(left, right)
    expected = {
        "lsh": (lsh.encode(images), (images - lsh.mean_) @ lsh.projection_),
        "itq": (itq.encode(images), itq.pca_.transform(images) @ itq.rotation_),
        "cca_x": (cca.encode_x(left), (left - cca.x_mean_) @ cca.x_weights_ @ cca.rotation_),
        "cca_y": (cca.encode_y(right), (right - cca.y_mean_) @ cca.y_weights_ @ cca.rotation_),
    }
    for name, (codes, z) in expected.items():
        assert codes.dtype == np.uint8 and codes.shape == (len(images), 2), name
        np.testing.assert_array_equal(codes, np.packbits(z >= 0, axis=1), err_msg=name)


# --------------------------------------------------------------------------
# LSH
# --------------------------------------------------------------------------


def test_lsh_is_deterministic_for_a_seed_and_ignores_feature_scale(digits):
    images, _, _, _ = digits
    codes = LSH(32, seed=3).fit(images).encode(images)
    np.testing.assert_array_equal(codes, LSH(32, seed=3).fit(images).encode(images))
    assert not np.array_equal(codes, LSH(32, seed=4).fit(images).encode(images))
    # sign((x / 16 - m / 16) . w) = sign((x - m) . w): scaling the pixels
    # changes no bit (up to rounding of values at exactly 0, none here).
    np.testing.assert_array_equal(codes, LSH(32, seed=3).fit(images / 16).encode(images / 16))
    # Centred hyperplanes cut the training data near its middle: each bit is
    # on for 30-70% of the images (measured 45-54%), where uncentred ones
    # through the origin would be near-constant on non-negative pixels.
    on = np.unpackbits(codes, axis=1).mean(axis=0)
    assert on.min() > 0.3 and on.max() < 0.7, on


def test_lsh_matches_the_bench_formula():
    # bench/bgan.py's former lsh_map: default_rng(seed).normal((d, bits)) as
    # float32, applied to centred pixels / 255.
    pixels = np.random.default_rng(1).integers(0, 256, size=(200, 784)).astype(np.uint8)
    mean = pixels.mean(axis=0) / 255.0
    projection = np.random.default_rng(0).normal(size=(784, 16)).astype(np.float32)
    expected = np.packbits((pixels / 255.0 - mean) @ projection >= 0, axis=-1)
    lsh = LSH(16, seed=0).fit(pixels / 255.0)
    np.testing.assert_array_equal(lsh.encode(pixels / 255.0), expected)


# --------------------------------------------------------------------------
# ITQ
# --------------------------------------------------------------------------


def test_itq_loss_never_increases_and_rotation_is_orthogonal(digits):
    images, _, _, _ = digits
    itq = ITQ(16, iterations=50, seed=0).fit(images)
    loss = itq.quantization_loss_
    assert loss.shape == (51,)
    # Each B step (sign) and R step (Procrustes) minimizes the loss with the
    # other fixed, so no iteration can raise it (tolerance: float rounding).
    assert np.all(np.diff(loss) <= 1e-9 * loss[0]), np.diff(loss)
    # Measured on digits (raw 0..16 pixels, so large values): 1,494,835 for
    # the random start -> 1,465,054 after 50 iterations, a 2% drop; require 1%.
    assert loss[-1] < 0.99 * loss[0]
    np.testing.assert_allclose(itq.rotation_.T @ itq.rotation_, np.eye(16), atol=1e-10)
    np.testing.assert_allclose(itq.rotation_ @ itq.rotation_.T, np.eye(16), atol=1e-10)


def test_itq_beats_lsh_on_digits(digits):
    # Measured, 16 bits, 300 queries vs 1,497 database images, mAP@all:
    # ITQ 0.613, LSH 0.316; chance (a random ranking) 0.0996, the mean share
    # of a query's class in the database.
    images, labels, q, db = digits
    itq = ITQ(16, seed=0).fit(images[db])
    lsh = LSH(16, seed=0).fit(images[db])
    itq_map = _map(itq.encode(images[q]), itq.encode(images[db]), labels[q], labels[db])
    lsh_map = _map(lsh.encode(images[q]), lsh.encode(images[db]), labels[q], labels[db])
    assert itq_map > 0.55, itq_map
    assert itq_map > 1.5 * lsh_map, (itq_map, lsh_map)


# --------------------------------------------------------------------------
# CCA-ITQ
# --------------------------------------------------------------------------


def test_cca_finds_a_shared_latent_signal():
    # x = [s, 9 noise columns], y = [9 noise columns, -s], all independent
    # N(0, 1). The only correlated pair of directions is x[:, 0] and y[:, 9],
    # with correlation |corr(s, -s)| = 1, shrunk by the relative ridge to
    # 1 / (1 + 1e-4) ~ 0.9999. The other 7 kept correlations are chance
    # correlations between independent noise, of order sqrt(1 / n) ~ 0.02 each
    # and about 0.11 at most over the 9 x 9 pairs (measured 0.113).
    rng = np.random.default_rng(0)
    n = 2000
    s = rng.normal(size=n)
    x = np.column_stack([s, rng.normal(size=(n, 9))])
    y = np.column_stack([rng.normal(size=(n, 9)), -s])
    cca = CCAITQ(8, seed=0).fit(x, y)
    rho = cca.canonical_correlations_
    assert rho.shape == (8,) and np.all(np.diff(rho) <= 0)
    assert rho[0] > 0.999 and rho[1] < 0.2, rho
    # The first direction reads s from both views: all of x's weight on column
    # 0, all of y's on column 9, with opposite signs since y holds -s.
    wx, wy = cca.x_weights_[:, 0], cca.y_weights_[:, 0]
    assert abs(wx[0]) / np.linalg.norm(wx) > 0.999
    assert abs(wy[9]) / np.linalg.norm(wy) > 0.999
    assert np.sign(wx[0]) == -np.sign(wy[9])
    # With power=4 the noise directions weigh rho^4 < 2e-4, so the stacked
    # projections are nearly rank one, v e1^T. Then the ITQ loss per row is
    # K - 2|v| sum_k |R_1k| + v^2, least when every |R_1k| = 1/sqrt(K): the
    # shared signal is spread evenly over the 8 bits...
    np.testing.assert_allclose(np.abs(cca.rotation_[0]), 1 / np.sqrt(8), atol=0.01)
    # ...and every bit is +-sign(s - mean(s)) in both views, so paired x and y
    # codes agree on (almost) every bit: wrong only when |s - mean| is below
    # the noise leak, ~1e-3, i.e. for ~0.1% of rows.
    bx = np.unpackbits(cca.encode_x(x), axis=1).astype(bool)
    by = np.unpackbits(cca.encode_y(y), axis=1).astype(bool)
    assert (bx == by).mean() > 0.995
    for k in range(8):
        agreement = (bx[:, k] == (s - s.mean() >= 0)).mean()
        assert max(agreement, 1 - agreement) > 0.995, (k, agreement)
    # A random pair (x_i, y_j) shares only the chance ~50% of its bits.
    assert 0.4 < (bx == by[rng.permutation(n)]).mean() < 0.6


def test_cca_itq_cross_modal_retrieval_on_digit_halves(digits):
    # Left half of each digit is modality x, right half modality y. Queries
    # are x codes, the database y codes (and the reverse); relevant = same
    # digit. Measured, 16 bits, mAP@all: CCA-ITQ x->y 0.413, y->x 0.406;
    # LSH, whose two hyperplane sets share nothing across modalities, 0.125;
    # chance 0.0996 (the mean share of a query's class in the database).
    # power=0 (no scaling by the correlations) measured 0.287, power=2 0.442:
    # the scaling matters, p = 4 is near the best.
    images, labels, q, db = digits
    left, right = _halves(images)
    cca = CCAITQ(16, seed=0).fit(left[db], right[db])
    x_to_y = _map(cca.encode_x(left[q]), cca.encode_y(right[db]), labels[q], labels[db])
    y_to_x = _map(cca.encode_y(right[q]), cca.encode_x(left[db]), labels[q], labels[db])
    lsh_x, lsh_y = LSH(16, seed=0).fit(left[db]), LSH(16, seed=0).fit(right[db])
    lsh = _map(lsh_x.encode(left[q]), lsh_y.encode(right[db]), labels[q], labels[db])
    assert x_to_y > 0.37 and y_to_x > 0.37, (x_to_y, y_to_x)
    assert lsh < 0.2, lsh
    assert min(x_to_y, y_to_x) > 2.5 * lsh, (x_to_y, y_to_x, lsh)
    assert np.all(np.diff(cca.quantization_loss_) <= 1e-9 * cca.quantization_loss_[0])
    np.testing.assert_allclose(cca.rotation_.T @ cca.rotation_, np.eye(16), atol=1e-10)


def test_cca_itq_pca_path_zero_columns_and_sparse_bow(digits):
    images, labels, q, db = digits
    left, right = _halves(images)
    # Digits' leftmost pixel column is blank in every image: zero-variance
    # features, which only the ridge keeps the covariance invertible for.
    assert np.all(left[:, 0] == 0)
    # pca_dims=20 < 32 features: each modality goes through PCA first, and the
    # weights map the raw 32-d features (PCA folded in).
    cca = CCAITQ(16, seed=0, pca_dims=20).fit(left[db], right[db])
    assert cca.x_pca_.n_components_ == 20 and cca.y_pca_.n_components_ == 20
    assert cca.x_weights_.shape == (32, 16) and cca.y_weights_.shape == (32, 16)
    x_to_y = _map(cca.encode_x(left[q]), cca.encode_y(right[db]), labels[q], labels[db])
    assert x_to_y > 0.35, x_to_y  # measured 0.404; 0.413 without PCA
    # A binary bag-of-words modality, as a scipy sparse matrix, with words
    # that never occur: fits and encodes like the dense array.
    bow = scipy.sparse.csr_matrix(right > 8)
    bow_dense = (right > 8).astype(np.float64)
    assert np.any(bow_dense[db].sum(axis=0) == 0)
    sparse_fit = CCAITQ(16, seed=0).fit(left[db], bow[db])
    dense_fit = CCAITQ(16, seed=0).fit(left[db], bow_dense[db])
    np.testing.assert_array_equal(sparse_fit.encode_y(bow[q]), dense_fit.encode_y(bow_dense[q]))
    assert np.all(np.isfinite(sparse_fit.y_weights_))


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

X = np.random.default_rng(0).normal(size=(100, 32))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LSH(12), "positive multiple of 8.*bits=12"),
        (lambda: ITQ(0), "positive multiple of 8.*bits=0"),
        (lambda: LSH(8).fit(X[0]), r"2-D array of shape \(n, d\), one item per row. Received: shape=\(32,\)"),
        (lambda: ITQ(8).fit(X[None]), r"2-D array.*Received: shape=\(1, 100, 32\)"),
        (lambda: LSH(8).fit(np.where(X > 2, np.nan, X)), r"x must be finite. Received NaN or inf in \d+ row\(s\)"),
        (lambda: CCAITQ(8).fit(X, np.where(X > 2, np.inf, X)), r"y must be finite"),
        (lambda: ITQ(8).fit(X.astype(str)), "real numbers. Received: dtype=<U"),
        (lambda: ITQ(64).fit(X), r"bits=64 exceeds the 32 features of x"),
        (lambda: ITQ(16).fit(X[:10]), r"more than 16 rows in x.*received 10 rows"),
        (lambda: CCAITQ(8).fit(X, X[:90]), r"same training pairs.*100 rows in x.*90 in y"),
        (lambda: CCAITQ(16).fit(X[:16], X[:16]), r"more than 16 rows in x and y.*received 16"),
        (lambda: CCAITQ(16).fit(X, X[:, :8]), r"bits=16 exceeds the 8 dimensions available in y"),
        (lambda: CCAITQ(8).fit(X, np.zeros((100, 10))), "y has no variance"),
        (lambda: CCAITQ(16, pca_dims=8), "pca_dims must be at least bits=16"),
        (lambda: CCAITQ(8, regularization=-1), "regularization must be"),
        (lambda: ITQ(8, iterations=0), "iterations must be a positive integer"),
        (lambda: LSH(8).fit(X).encode(X[:, :5]), r"32 features per row, as the data passed to fit. Received: shape=\(100, 5\)"),
        (lambda: CCAITQ(8).fit(X, X[:, :10]).encode_y(X), r"10 features per row.*\(100, 32\)"),
    ],
)
def test_errors_say_what_was_expected_and_received(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "encode, match",
    [
        (lambda: LSH(8).encode(X), r"LSH is not fitted.*fit\(x\)"),
        (lambda: ITQ(8).encode(X), r"ITQ is not fitted.*fit\(x\)"),
        (lambda: CCAITQ(8).encode_x(X), r"CCAITQ is not fitted.*fit\(x, y\)"),
        (lambda: CCAITQ(8).encode_y(X), r"CCAITQ is not fitted.*fit\(x, y\)"),
    ],
)
def test_encode_before_fit(encode, match):
    # NotFittedError is a ValueError too.
    with pytest.raises(NotFittedError, match=match):
        encode()
