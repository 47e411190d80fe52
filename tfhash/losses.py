"""Losses for learning to hash, written once and shared by the models.

Pairwise losses take the batch's relaxed codes `z` (rows, with gradient) and a
set of "column" codes to pair them with. On one device the columns are the
batch itself; under a distribution strategy they are the codes gathered from
every replica, so the loss equals the single-device loss (see
`tfhash.models.base.gather_across_replicas`).
"""

import math

import keras
from keras import ops

QUANTIZATION_VARIANTS = ("log_cosh", "squared")


def label_similarity(labels_a, labels_b):
    """S_ij = 1 where item i of `labels_a` and item j of `labels_b` share a label.

    Args:
        labels_a: (n,) integer class ids, or (n, c) multi-hot {0, 1} labels.
        labels_b: the same kind of labels, (m,) or (m, c).

    Returns:
        (n, m) float32 matrix of 0/1.
    """
    if len(labels_a.shape) == 1:
        same = ops.equal(ops.expand_dims(labels_a, 1), ops.expand_dims(labels_b, 0))
        return ops.cast(same, "float32")
    shared = ops.matmul(
        ops.cast(labels_a, "float32"), ops.transpose(ops.cast(labels_b, "float32"))
    )
    return ops.cast(ops.greater(shared, 0), "float32")


def balanced_pair_weights(s, counted, known=None):
    """Pair weights that make similar pairs weigh as much in total as all pairs:

        w_ij = T / P  if pair ij is similar,  1 otherwise

    with P the similar pairs among the T pairs of `counted`: thulab/DeepHash's
    weighting for DHN. Similar pairs are rare (10% for 10 balanced classes,
    under 0.1% for BGAN's neighbours), and unweighted their loss is drowned.
    DHN, BGAN and SSAH use it under `balanced=True`.

    Args:
        s: (rows, columns) similarity of the pairs to weigh: values > 0 are
            similar (1/0 and {-1, +1} matrices both work).
        counted: the pairs that set P and T: the global batch's (gathered
            across replicas), so every replica weighs pairs alike and N
            replicas take one device's steps.
        known: optional 0/1 mask broadcast onto `counted` and `s`: pairs
            outside it weigh 0 and are not counted.

    Returns:
        weights shaped like `s`.
    """
    similar = ops.cast(ops.greater(s, 0), s.dtype)
    counted_similar = ops.cast(ops.greater(counted, 0), s.dtype)
    mask = ops.ones_like(counted_similar) if known is None else ops.cast(known, s.dtype) * ops.ones_like(counted_similar)
    total = ops.sum(mask)
    positives = ops.maximum(ops.sum(counted_similar * mask), 1.0)
    weights = 1.0 - similar + similar * (total / positives)
    return weights if known is None else weights * ops.cast(known, s.dtype)


@keras.saving.register_keras_serializable(package="tfhash")
class PairwiseCrossEntropy:
    """DHN's pairwise cross-entropy on inner products of relaxed codes.

    For a pair with similarity s_ij and inner product t_ij = alpha * <z_i, z_j>:
        l_ij = log(1 + exp(t_ij)) - s_ij * t_ij
    the negative log-likelihood of s_ij under sigmoid(t_ij) (Zhu et al., AAAI 2016).
    softplus keeps it finite for large |t| without the reference code's clipping.

    Args:
        alpha: scale on the inner product. The paper uses 1; public code scales
            it down (DeepHash-pytorch uses 0.5) because with K bits
            <z_i, z_j> ranges over [-K, K] and saturates the sigmoid.
        balanced: weigh similar pairs T / P, dissimilar ones 1
            (`balanced_pair_weights`, thulab/DeepHash's), counted over the
            pairs among the columns.

    Call:
        `loss(z, labels, z_columns, labels_columns)` returns one loss per row of
        `z`: the weighted mean of l_ij over the columns j. With the columns the
        batch gathered across replicas (and the rows one replica's share), the
        balance counts are the global batch's, the same on every replica, so N
        replicas take the steps one device takes.
    """

    def __init__(self, alpha=1.0, balanced=False):
        if alpha <= 0:
            raise ValueError(f"alpha must be positive. Received: alpha={alpha}")
        self.alpha = float(alpha)
        self.balanced = bool(balanced)

    def __call__(self, z, labels, z_columns, labels_columns):
        t = self.alpha * ops.matmul(z, ops.transpose(z_columns))
        s = ops.cast(label_similarity(labels, labels_columns), t.dtype)
        pair_loss = ops.softplus(t) - s * t
        if self.balanced:
            # Counted among the columns (the gathered batch), not this replica's rows.
            among_columns = ops.cast(label_similarity(labels_columns, labels_columns), t.dtype)
            pair_loss = pair_loss * balanced_pair_weights(s, among_columns)
        return ops.mean(pair_loss, axis=1)

    def get_config(self):
        return {"alpha": self.alpha, "balanced": self.balanced}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfhash")
class QuantizationLoss:
    """Pulls relaxed codes towards {-1, +1}; one value per row.

    Args:
        variant: "log_cosh" is DHN's paper: sum_k log cosh(|z_k| - 1), the
            smoothed bimodal Laplacian prior. "squared" is thulab's code:
            mean_k (|z_k| - 1)^2.
    """

    def __init__(self, variant="log_cosh"):
        if variant not in QUANTIZATION_VARIANTS:
            raise ValueError(
                f"variant must be one of {QUANTIZATION_VARIANTS}. Received: variant={variant!r}"
            )
        self.variant = variant

    def __call__(self, z):
        gap = ops.abs(z) - 1.0
        if self.variant == "log_cosh":
            # log cosh x = x + softplus(-2x) - log 2: stable for any x.
            return ops.sum(gap + ops.softplus(-2.0 * gap) - math.log(2.0), axis=-1)
        return ops.mean(ops.square(gap), axis=-1)

    def get_config(self):
        return {"variant": self.variant}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
