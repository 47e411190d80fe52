"""Classical (shallow) hashing baselines: LSH, ITQ and cross-modal CCA-ITQ.

The bench scripts use these to show that the learned models beat them on the
same protocol, so their codes come out exactly in tfhash's format: packed
``uint8`` arrays of shape ``(n, bits // 8)``, ``np.packbits(z >= 0, axis=1)``
(the byte layout of :class:`tfhash.layers.SignPack`), ready for
:mod:`tfhash.metrics`.

Each baseline is an sklearn-like estimator: ``fit`` learns from features
(NumPy arrays, one row per item; scipy sparse matrices are densified), the
learned state lives in attributes with a trailing underscore, and ``encode``
(``encode_x`` / ``encode_y`` for the two modalities of :class:`CCAITQ`) maps
new rows to packed codes.

Examples:
  >>> from tfhash import metrics
  >>> itq = ITQ(bits=16, seed=0).fit(train_features)
  >>> metrics.mean_average_precision(
  ...     itq.encode(query_features), itq.encode(database_features),
  ...     query_labels, database_labels)
"""

import numpy as np
import scipy.linalg
import scipy.sparse
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError

from tfhash.checks import check_bits, check_matrix

# Rows projected per block when encoding: bounds the float64 copy of the
# centred features (8192 x 12288 x 8 B = 0.8 GB at worst, 50 MB for 784-d).
_ENCODE_ROWS = 8192

__all__ = ["LSH", "ITQ", "CCAITQ"]


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _check_features(name, x, num_features=None):
    """Returns `x` as a 2-D real ndarray; ValueError naming what was wrong."""
    return check_matrix(x, name, num_features, why=", as the data passed to fit")


def _check_samples(name, x, bits):
    # n centred rows span at most n - 1 dimensions: fewer rows than that
    # cannot give `bits` informative directions.
    if x.shape[0] <= bits:
        raise ValueError(
            f"fitting {bits} bits needs more than {bits} rows in {name} (centred "
            f"data of n rows spans at most n - 1 dimensions); received "
            f"{x.shape[0]} rows, shape={x.shape}"
        )


def _check_positive_int(name, value):
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or value < 1
    ):
        raise ValueError(f"{name} must be a positive integer; received {name}={value!r}")
    return int(value)


def _check_fitted(estimator, attribute, method):
    if not hasattr(estimator, attribute):
        raise NotFittedError(
            f"This {type(estimator).__name__} is not fitted yet: call "
            f"{method} before encoding"
        )


# --------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------


def _pack(z):
    """Real codes -> packed uint8, bit 1 where z >= 0 (SignPack's convention)."""
    return np.packbits(z >= 0, axis=1)


def _encode(x, mean, projection):
    """packbits((x - mean) @ projection >= 0), in row blocks to bound memory."""
    blocks = []
    for start in range(0, x.shape[0], _ENCODE_ROWS):
        block = x[start : start + _ENCODE_ROWS].astype(np.float64) - mean
        blocks.append(_pack(block @ projection))
    return np.concatenate(blocks)


def _signs(z):
    return np.where(z >= 0, 1.0, -1.0)


def _random_rotation(bits, rng):
    # Q of the QR of a Gaussian matrix, columns sign-fixed by diag(R): a Haar
    # distributed orthogonal matrix (Mezzadri 2007), as ITQ's initialization.
    q, r = np.linalg.qr(rng.normal(size=(bits, bits)))
    return q * np.sign(np.diag(r))


def _itq_rotation(v, iterations, rng):
    """Iterative Quantization (Gong & Lazebnik, CVPR 2011) on centred data `v`.

    Minimizes ||B - V R||_F^2 over B in {-1, 1}^(n x bits) and orthogonal R by
    alternating B = sign(V R) and the orthogonal Procrustes solution
    R = argmin ||V R - B||_F (from the SVD of V^T B). Neither step can raise
    the loss, so the recorded losses are non-increasing.

    Returns:
      (rotation, losses): the (bits, bits) rotation and the loss of the random
      initial rotation followed by the loss after each iteration.
    """
    rotation = _random_rotation(v.shape[1], rng)
    z = v @ rotation
    losses = [np.sum((_signs(z) - z) ** 2)]
    for _ in range(iterations):
        rotation, _ = scipy.linalg.orthogonal_procrustes(v, _signs(z))
        z = v @ rotation
        losses.append(np.sum((_signs(z) - z) ** 2))
    return rotation, np.asarray(losses)


def _pca(x, dims, seed):
    """sklearn PCA fitted on `x`; "auto" picks randomized SVD for large inputs
    (seeded, so fits are reproducible) and exact SVD for small ones."""
    return PCA(n_components=dims, random_state=seed).fit(x)


# --------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------


class LSH:
    """Locality-sensitive hashing by random hyperplanes (Charikar, STOC 2002).

    Bit k of a code is `(x - mean) . w_k >= 0` with `w_k` i.i.d. standard
    Gaussian. The features are centred first (`fit` learns the mean) so that
    each hyperplane passes through the data and splits it roughly in half;
    through the origin, hyperplanes far from non-negative data such as pixels
    would give near-constant bits. Data-independent otherwise: the usual
    lower bar for learned hashing.

    The projection is `np.random.default_rng(seed).normal(size=(d, bits))` in
    float32, so the codes do not depend on the scale of the features (pixels
    in [0, 255] or [0, 1] give the same codes).

    Args:
      bits: code length, a positive multiple of 8 (codes are packed to bytes).
      seed: seed of the hyperplanes; the same seed and data give the same codes.

    Attributes:
      mean_: (d,) float64 mean of the training features.
      projection_: (d, bits) float32 Gaussian hyperplane normals.
    """

    def __init__(self, bits, seed=0):
        check_bits(bits)
        self.bits = bits
        self.seed = seed

    def fit(self, x):
        """Learns the mean of `x` (n, d) and draws the hyperplanes. Returns self."""
        x = _check_features("x", x)
        self.mean_ = x.mean(axis=0, dtype=np.float64)
        rng = np.random.default_rng(self.seed)
        self.projection_ = rng.normal(size=(x.shape[1], self.bits)).astype(np.float32)
        return self

    def encode(self, x):
        """Packed uint8 codes of `x` (n, d): shape (n, bits // 8)."""
        _check_fitted(self, "projection_", "fit(x)")
        x = _check_features("x", x, self.mean_.size)
        return _encode(x, self.mean_, self.projection_)


class ITQ:
    """PCA followed by Iterative Quantization (Gong & Lazebnik, CVPR 2011;
    Gong, Lazebnik, Gordo & Perronnin, PAMI 2013).

    The features are projected on their top `bits` principal components
    (V = PCA(x)), then rotated by the orthogonal R that minimizes the
    quantization loss ||sign(V R) - V R||_F^2: PCA directions have very unequal
    variances, and a rotation spreads the variance over the bits so that
    thresholding at 0 loses less. R starts random and alternates
    B = sign(V R) with the orthogonal Procrustes update R from the SVD of
    B^T V, `iterations` times (50 in the paper).

    Args:
      bits: code length, a positive multiple of 8, at most the feature
        dimension and less than the number of training rows.
      iterations: ITQ iterations (alternations of the B and R steps).
      seed: seed of the initial rotation and of randomized PCA.

    Attributes:
      pca_: the fitted `sklearn.decomposition.PCA` (`bits` components).
      rotation_: (bits, bits) orthogonal rotation R.
      quantization_loss_: (iterations + 1,) float64, ||B - V R||_F^2 over the
        training rows: [0] for the random initial rotation, [t] after t
        iterations, [-1] for the fitted model. Non-increasing.
    """

    def __init__(self, bits, iterations=50, seed=0):
        check_bits(bits)
        self.bits = bits
        self.iterations = _check_positive_int("iterations", iterations)
        self.seed = seed

    def fit(self, x):
        """Learns PCA and the ITQ rotation from `x` (n, d). Returns self."""
        x = _check_features("x", x)
        if self.bits > x.shape[1]:
            raise ValueError(
                f"bits={self.bits} exceeds the {x.shape[1]} features of x: PCA "
                f"gives at most {x.shape[1]} directions, one per bit; received "
                f"shape={x.shape}"
            )
        _check_samples("x", x, self.bits)
        self.pca_ = _pca(x, self.bits, self.seed)
        rng = np.random.default_rng(self.seed)
        self.rotation_, self.quantization_loss_ = _itq_rotation(
            self.pca_.transform(x).astype(np.float64), self.iterations, rng
        )
        # PCA's transform is (x - mean) @ components.T: fold it into one map.
        self._projection = self.pca_.components_.T.astype(np.float64) @ self.rotation_
        return self

    def encode(self, x):
        """Packed uint8 codes of `x` (n, d): shape (n, bits // 8)."""
        _check_fitted(self, "rotation_", "fit(x)")
        x = _check_features("x", x, self.pca_.n_features_in_)
        return _encode(x, self.pca_.mean_, self._projection)


class CCAITQ:
    """Cross-modal CCA-ITQ (Gong, Lazebnik, Gordo & Perronnin, PAMI 2013).

    Canonical correlation analysis between two modalities of paired training
    items (say image features x and text features y) finds directions W_x,
    W_y whose projections x W_x and y W_y are maximally correlated; one ITQ
    rotation learned on both modalities' projections, stacked, then quantizes
    them into a single Hamming space, so an x code can be matched against y
    codes (x -> y retrieval) and vice versa. The usual shallow baseline of
    cross-modal hashing papers.

    Steps of `fit(x, y)`:

    1. Per modality, centre and, when it has more than `pca_dims` features,
       project on its top `pca_dims` principal components. With n training
       pairs, a d x d covariance of d >~ n features (12,288-d pixels, n = 4,000)
       is rank-deficient: CCA would then find spurious perfect correlations and
       only the regularizer would decide the directions. PCA keeps the
       high-variance subspace where correlations can be estimated, and the
       problem shrinks from d x d to `pca_dims` x `pca_dims` (a 12,288-d
       covariance alone is 1.2 GB; fitting 4,000 such pairs with the default
       512 takes about 10-15 s on 2 cores, mostly the randomized PCA).
    2. Regularized CCA: C_xx + r I, C_yy + r I with r = `regularization` times
       the mean feature variance of that modality (relative, so it does not
       depend on the feature scale; it also makes an all-zero column, such as
       a word absent from the training texts, harmless). Solved by whitening
       with the Cholesky factors, C_xx = L_x L_x^T, and the SVD
       L_x^-1 C_xy L_y^-T = U S V^T: W_x = L_x^-T U, W_y = L_y^-T V, canonical
       correlations S, the top `bits` kept.
    3. Each direction is scaled by its canonical correlation to the power
       `power` (Gong et al. scale the CCA directions by the eigenvalues, power
       p = 4): weakly correlated directions, which mostly carry
       modality-specific noise, then weigh little in the rotation and codes.
       `power=0` leaves the whitened directions unscaled.
    4. ITQ (see :class:`ITQ`) on the 2n stacked rows [x W_x; y W_y].

    Args:
      bits: code length, a positive multiple of 8, at most the (reduced)
        dimension of either modality and less than the number of pairs.
      regularization: ridge added to each covariance, relative to its mean
        diagonal.
      iterations: ITQ iterations.
      seed: seed of the initial rotation and of randomized PCA.
      power: exponent p of the canonical-correlation scaling.
      pca_dims: PCA dimension per modality when it has more features; None
        for no PCA.

    Attributes:
      canonical_correlations_: (bits,) regularized canonical correlations,
        descending, in [0, 1).
      x_mean_, y_mean_: (d_x,), (d_y,) feature means.
      x_weights_, y_weights_: (d_x, bits), (d_y, bits) linear maps from centred
        features to the scaled canonical space (PCA folded in).
      x_pca_, y_pca_: the fitted `sklearn.decomposition.PCA`, or None when
        that modality was not reduced.
      rotation_: (bits, bits) orthogonal ITQ rotation shared by both modalities.
      quantization_loss_: (iterations + 1,) ITQ loss over the stacked rows, as
        in :class:`ITQ`; non-increasing.
    """

    def __init__(
        self, bits, regularization=1e-4, iterations=50, seed=0, *, power=4.0, pca_dims=512
    ):
        check_bits(bits)
        if not np.isfinite(regularization) or regularization < 0:
            raise ValueError(
                "regularization must be a finite non-negative number (relative to "
                f"the mean feature variance); received regularization={regularization!r}"
            )
        if not np.isfinite(power) or power < 0:
            raise ValueError(f"power must be a finite number >= 0; received power={power!r}")
        if pca_dims is not None:
            pca_dims = _check_positive_int("pca_dims", pca_dims)
            if pca_dims < bits:
                raise ValueError(
                    f"pca_dims must be at least bits={bits} (CCA needs {bits} "
                    f"directions per modality); received pca_dims={pca_dims}"
                )
        self.bits = bits
        self.regularization = float(regularization)
        self.iterations = _check_positive_int("iterations", iterations)
        self.seed = seed
        self.power = float(power)
        self.pca_dims = pca_dims

    def fit(self, x, y):
        """Learns the shared code from paired rows x (n, d_x) and y (n, d_y).

        Row i of `x` and row i of `y` must describe the same item. Returns self.
        """
        x = _check_features("x", x)
        y = _check_features("y", y)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                "x and y must hold the same training pairs, row i of each "
                f"describing item i; received {x.shape[0]} rows in x "
                f"(shape={x.shape}) and {y.shape[0]} in y (shape={y.shape})"
            )
        _check_samples("x and y", x, self.bits)
        reduced = []
        for name, features in (("x", x), ("y", y)):
            mean = features.mean(axis=0, dtype=np.float64)
            pca = None
            if self.pca_dims is not None and features.shape[1] > self.pca_dims:
                # At most n - 1 components carry variance after centring.
                pca = _pca(features, min(self.pca_dims, features.shape[0] - 1), self.seed)
                basis = pca.components_.T.astype(np.float64)  # (d, k)
                mean = pca.mean_.astype(np.float64)
                z = pca.transform(features).astype(np.float64)
            else:
                basis = None
                z = features.astype(np.float64) - mean
            if self.bits > z.shape[1]:
                raise ValueError(
                    f"bits={self.bits} exceeds the {z.shape[1]} dimensions "
                    f"available in {name} (after PCA to at most pca_dims="
                    f"{self.pca_dims} and n - 1 = {features.shape[0] - 1}): CCA "
                    f"gives at most that many directions; received "
                    f"{name}.shape={features.shape}"
                )
            reduced.append((mean, pca, basis, z))
        (x_mean, self.x_pca_, x_basis, zx), (y_mean, self.y_pca_, y_basis, zy) = reduced

        n = zx.shape[0]
        cxx, cyy, cxy = zx.T @ zx / n, zy.T @ zy / n, zx.T @ zy / n
        lx = self._cholesky("x", cxx)
        ly = self._cholesky("y", cyy)
        # Whitened cross-covariance L_x^-1 C_xy L_y^-T; its singular values
        # are the canonical correlations.
        whitened = scipy.linalg.solve_triangular(lx, cxy, lower=True)
        whitened = scipy.linalg.solve_triangular(ly, whitened.T, lower=True).T
        u, s, vt = scipy.linalg.svd(whitened, full_matrices=False)
        u, s, v = u[:, : self.bits], s[: self.bits], vt[: self.bits].T
        wx = scipy.linalg.solve_triangular(lx.T, u, lower=False)
        wy = scipy.linalg.solve_triangular(ly.T, v, lower=False)
        scale = s**self.power
        wx, wy = wx * scale, wy * scale

        self.canonical_correlations_ = s
        self.rotation_, self.quantization_loss_ = _itq_rotation(
            np.vstack([zx @ wx, zy @ wy]), self.iterations, np.random.default_rng(self.seed)
        )
        self.x_mean_, self.y_mean_ = x_mean, y_mean
        self.x_weights_ = wx if x_basis is None else x_basis @ wx
        self.y_weights_ = wy if y_basis is None else y_basis @ wy
        return self

    def _cholesky(self, name, covariance):
        mean_variance = np.trace(covariance) / covariance.shape[0]
        if mean_variance <= 0:
            raise ValueError(
                f"{name} has no variance: every feature is constant over the "
                "training rows, so it carries nothing to correlate"
            )
        ridge = max(self.regularization * mean_variance, np.finfo(np.float64).eps * mean_variance)
        return scipy.linalg.cholesky(
            covariance + ridge * np.eye(covariance.shape[0]), lower=True
        )

    def encode_x(self, x):
        """Packed uint8 codes of modality x (n, d_x): shape (n, bits // 8)."""
        _check_fitted(self, "rotation_", "fit(x, y)")
        x = _check_features("x", x, self.x_mean_.size)
        return _encode(x, self.x_mean_, self.x_weights_ @ self.rotation_)

    def encode_y(self, y):
        """Packed uint8 codes of modality y (n, d_y): shape (n, bits // 8)."""
        _check_fitted(self, "rotation_", "fit(x, y)")
        y = _check_features("y", y, self.y_mean_.size)
        return _encode(y, self.y_mean_, self.y_weights_ @ self.rotation_)
