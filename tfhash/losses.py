"""The loss library of tfhash: every loss the models use, written once.

Small functions over distances, inner products and relaxed codes, in Keras ops
(any backend, any float dtype), each returning one value per example: per row
for a function of codes, per pair (the broadcast shape of its arguments) for a
function of a distance or an inner product. None reduces over the batch: the
model weighs, masks and averages (`tfhash.models.base.record_losses`).

    label_similarity        S_ij = [items i and j share a label]
    soft_label_similarity   s_ij = cos(y_i, y_j) of label vectors         (IDHN)
    label_overlap           c_ij = |y_i & y_j| / |y_i | y_j|               (HashNet)
    balanced_pair_weights   w_ij = T / P for similar pairs, 1 or T / (T - P) otherwise
    squared_euclidean_distances, cosine_hamming_distances   pair distances
    pairwise_likelihood     log(1 + e^theta) - s theta                  (DHN, DPSH, HashNet, SSAH)
    contrastive             s d / 2 + (1 - s) max(0, m - d) / 2         (DSH)
    triplet_ranking         max(0, m + |a - p|^2 - |a - n|^2)           (DSH-GAN, UGACH)
    triplet_likelihood      -log sigmoid(theta_qp - theta_qn - m)       (DTSH)
    cauchy_cross_entropy    s log(1 + d / gamma) + (1 - s) log(1 + gamma / d)   (DCH)
    cauchy_quantization     log(1 + d_H(|u|, 1) / gamma)                (DCH)
    quantization_l2, quantization_log_cosh, quantization_abs_one   codes towards {-1, +1}
    real_fake               sigmoid cross-entropy of discriminator logits (GANs)

`PairwiseCrossEntropy` and `QuantizationLoss` are DHN's two terms as
configurable, serializable objects built on these functions.

Pairwise losses pair a replica's rows with "column" codes: on one device the
batch itself, under a distribution strategy the codes gathered from every
replica, so the loss equals the single-device loss (see
`tfhash.models.base.gather_across_replicas`).
"""

import math

import keras
from keras import ops

QUANTIZATION_VARIANTS = ("log_cosh", "squared")

# Floor on a product of norms: a zero code has cosine 0 with every code.
_NORM_FLOOR = 1e-12
# Floor on the distance the Cauchy dissimilar term log(1 + gamma / d) reads: finite for parallel codes.
_DISTANCE_FLOOR = 1e-6


# --------------------------------------------------------------------------
# Similarity and pair weights


def label_similarity(labels_a, labels_b):
    """S_ij = 1 where item i of `labels_a` and item j of `labels_b` share a label.

    The one implementation: `tfhash.data.pair_similarity` is this on NumPy
    arrays.

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


def soft_label_similarity(labels_a, labels_b):
    """s_ij = cos(y_i, y_j), the cosine of two items' label vectors (IDHN's soft similarity):
    1 for equal label sets, 0 for disjoint ones, between for overlapping ones.

    Args:
        labels_a: (n,) integer class ids, or (n, c) multi-hot labels (a row
            without labels has s = 0 with every row).
        labels_b: the same kind of labels, (m,) or (m, c).

    Returns:
        (n, m) float32 matrix in [0, 1]; for class ids `label_similarity`'s 0/1.
    """
    if len(labels_a.shape) == 1:
        return label_similarity(labels_a, labels_b)
    return _cosines(ops.cast(labels_a, "float32"), ops.cast(labels_b, "float32"))


def label_overlap(labels_a, labels_b):
    """c_ij = |y_i & y_j| / |y_i | y_j|, the Jaccard overlap of multi-hot rows (HashNet's c_ij).

    Args:
        labels_a: (n, c) multi-hot {0, 1} labels.
        labels_b: (m, c) multi-hot labels.

    Returns:
        (n, m) float32 matrix in [0, 1]; two rows without labels have c = 0.
    """
    a, b = ops.cast(labels_a, "float32"), ops.cast(labels_b, "float32")
    shared = ops.matmul(a, ops.transpose(b))
    union = ops.expand_dims(ops.sum(a, axis=1), 1) + ops.expand_dims(ops.sum(b, axis=1), 0) - shared
    return shared / ops.maximum(union, 1.0)


def balanced_pair_weights(s, counted, known=None, counted_known=None, balance_dissimilar=False):
    """Pair weights that make similar pairs weigh as much in total as all pairs:

        w_ij = T / P  if pair ij is similar,  1 otherwise
        (balance_dissimilar: T / (T - P) otherwise)

    with P the similar pairs among the T pairs of `counted`. The first is
    thulab/DeepHash's weighting for DHN: similar pairs are rare (10% for 10
    balanced classes, under 0.1% for BGAN's neighbours), and unweighted their
    loss is drowned. DHN, BGAN and SSAH use it under `balanced=True`. The
    second is DCH's and HashNet's |S| / |S_1| and |S| / |S_0|: each class of
    pairs weighs as much in total as all pairs.

    Args:
        s: (rows, columns) similarity of the pairs to weigh: values > 0 are
            similar (1/0 and {-1, +1} matrices both work).
        counted: the pairs that set P and T: the global batch's (gathered
            across replicas), so every replica weighs pairs alike and N
            replicas take one device's steps.
        known: optional 0/1 mask broadcast onto `s`: pairs outside it weigh 0;
            and, unless `counted_known` is given, onto `counted`: pairs
            outside it are not counted (SSAH's memory rows not yet seen).
        counted_known: optional 0/1 mask broadcast onto `counted` alone
            (DCH's pairs of two distinct rows).
        balance_dissimilar: weigh dissimilar pairs T / (T - P), not 1.

    A class without pairs in `counted` counts 1.

    Returns:
        weights shaped like `s`.
    """
    similar = ops.cast(ops.greater(s, 0), s.dtype)
    counted_similar = ops.cast(ops.greater(counted, 0), s.dtype)
    counted_known = known if counted_known is None else counted_known
    mask = ops.ones_like(counted_similar)
    if counted_known is not None:
        mask = ops.cast(counted_known, s.dtype) * mask
    total = ops.sum(mask)
    positives = ops.sum(counted_similar * mask)
    dissimilar = total / ops.maximum(total - positives, 1.0) if balance_dissimilar else 1.0
    weights = similar * (total / ops.maximum(positives, 1.0)) + (1.0 - similar) * dissimilar
    return weights if known is None else weights * ops.cast(known, s.dtype)


# --------------------------------------------------------------------------
# Distances between the codes of two sets


def squared_euclidean_distances(a, b):
    """D_ij = |a_i - b_j|^2 = |a_i|^2 - 2 <a_i, b_j> + |b_j|^2.

    On codes in {-1, +1}^K this is 4 times the Hamming distance.

    Args:
        a: (n, K) codes.
        b: (m, K) codes.

    Returns:
        (n, m) distances. The expanded form rounds, so a pair of equal codes
        can get a tiny nonzero (even negative) distance.
    """
    return (
        ops.sum(ops.square(a), axis=-1, keepdims=True)
        - 2.0 * ops.matmul(a, ops.transpose(b))
        + ops.expand_dims(ops.sum(ops.square(b), axis=-1), 0)
    )


def cosine_hamming_distances(a, b, max_cosine=0.99):
    """DCH's Hamming distance of continuous codes:

        d_H(a_i, b_j) = K / 2 * (1 - cos(a_i, b_j))

    which is the Hamming distance where a_i, b_j are in {-1, +1}^K (there
    cos = 1 - 2 d_H / K); it equals K / 4 |a_i/|a_i| - b_j/|b_j||^2.

    Args:
        a: (n, K) codes.
        b: (m, K) codes.
        max_cosine: the cosine is clipped to at most this, so d_H >= K / 2 *
            (1 - max_cosine) > 0, even for a code paired with itself. Default
            0.99, as DeepHash-pytorch's DCH; None for no clip (the paper).

    A zero code has cosine 0 with every code (the product of norms is
    floored).

    Returns:
        (n, m) distances in [K / 2 * (1 - max_cosine), K].
    """
    bits = a.shape[-1]
    cosine = _cosines(a, b)
    if max_cosine is not None:
        cosine = ops.minimum(cosine, max_cosine)
    return 0.5 * bits * (1.0 - cosine)


def _cosines(a, b):
    """cos(a_i, b_j), (n, m), the product of norms floored: a zero row has cosine 0 with every row."""
    norms = ops.sqrt(ops.sum(ops.square(a), axis=-1, keepdims=True)) * ops.expand_dims(
        ops.sqrt(ops.sum(ops.square(b), axis=-1)), 0
    )
    return ops.matmul(a, ops.transpose(b)) / ops.maximum(norms, _NORM_FLOOR)


# --------------------------------------------------------------------------
# Pairwise losses: one value per pair


def pairwise_likelihood(theta, similarity):
    """The negative log-likelihood of a pair's similarity under sigmoid(theta):

        p(s = 1 | theta) = sigmoid(theta) = 1 / (1 + e^-theta)
        l = -log p(s | theta) = log(1 + e^theta) - s * theta

    the pairwise loss of DPSH (theta = <u_i, u_j> / 2), DHN (theta = alpha
    <z_i, z_j>), HashNet (weighted) and SSAH (J1, J2 with theta = <F_i, F_j> / 2).

    - log(1 + e^theta) as softplus: finite for any theta (e^theta overflows
      float32 past theta = 88), without the reference codes' clipping of theta.
    - s may be soft (in [0, 1]); for s in {0, 1} this is the sigmoid
      cross-entropy of logit theta and label s (`real_fake` with a label per pair).

    Args:
        theta: inner products, any shape, e.g. (rows, columns).
        similarity: s, 1 for similar pairs and 0 for dissimilar ones,
            broadcastable to `theta`.

    Returns:
        one loss per pair, shaped like `theta`.
    """
    return ops.softplus(theta) - similarity * theta


def contrastive(distance, similarity, margin):
    """DSH's contrastive loss of a pair (Liu, Wang, Shan, Chen; CVPR 2016):

        l = s * d / 2 + (1 - s) * max(0, m - d) / 2

    with d = |b_i - b_j|^2 the squared Euclidean distance of the relaxed
    codes: similar pairs are pulled together, dissimilar ones pushed to a
    distance of at least m.

    - s is 1 for similar pairs (the paper's y = 1 - s: y = 0 similar).
    - The paper's m = 2K, with codes near {-1, +1} (d up to 4K): the
      caller passes it.

    Args:
        distance: d, squared Euclidean distances (`squared_euclidean_distances`).
        similarity: s in {0, 1}, broadcastable to `distance`.
        margin: m > 0.

    Returns:
        one loss per pair, shaped like `distance`.
    """
    return 0.5 * similarity * distance + 0.5 * (1.0 - similarity) * ops.relu(margin - distance)


def triplet_ranking(anchor, positive, negative, margin):
    """The triplet ranking hinge on squared Euclidean distances of relaxed codes:

        l = max(0, m + |a - p|^2 - |a - n|^2)

    zero once the negative is farther from the anchor than the positive by m.
    DSH-GAN: a = H(x), p = H(x+), n = H(x-) on sigmoid codes, m = bits / 4.
    UGACH's relevance hinge f: a = h(q), p = h(x^M) (a related item),
    n = h(x^G) (the generator's pick), m = bits / 8.

    Args:
        anchor, positive, negative: (n, K) codes, one triplet per row.
        margin: m.

    Returns:
        (n,) one loss per triplet.
    """
    near = ops.sum(ops.square(anchor - positive), axis=-1)
    far = ops.sum(ops.square(anchor - negative), axis=-1)
    return ops.relu(margin + near - far)


def triplet_likelihood(theta_positive, theta_negative, margin):
    """DTSH's negative log-likelihood of a triplet (Wang, Shi, Kitani; ACCV 2016):

        l = -log sigmoid(theta_qp - theta_qn - m) = log(1 + e^(m + theta_qn - theta_qp))

    for an anchor q, a positive p (more similar to q) and a negative n, with
    theta the inner products (DTSH: u_q^T u_p / 2): the triplet analogue of
    `pairwise_likelihood`. As softplus: finite for any theta.

    Args:
        theta_positive: theta_qp, any shape.
        theta_negative: theta_qn, broadcastable to `theta_positive`.
        margin: m.

    Returns:
        one loss per triplet, the broadcast shape.
    """
    return ops.softplus(margin + theta_negative - theta_positive)


def cauchy_cross_entropy(hamming_distance, similarity, gamma):
    """DCH's Cauchy cross-entropy of a pair (Cao, Long, Liu, Wang; CVPR 2018):

        p(s = 1 | d) = gamma / (gamma + d)
        l = -s log p - (1 - s) log(1 - p)
          = s * log(1 + d / gamma) + (1 - s) * log(1 + gamma / d)

    the paper's s log(d / gamma) + log(1 + gamma / d), rearranged. The
    Cauchy probability falls fast below a Hamming radius of about gamma and
    slowly beyond, so similar pairs far apart are penalized hard: it
    concentrates similar codes within a small Hamming ball.

    - Written with log1p per term: accurate for d << gamma, where the
      paper's form subtracts two large logs.
    - Finite, with finite gradients, for any d >= 0: the dissimilar term
      reads d floored at 1e-6 (two codes in parallel, d = 0), the similar
      one d floored at 0 (a rounding below 0); for d >= 1e-6 exactly the
      formula. Weighing both terms unfloored, a similar pair at d = 0 would
      give 0 * inf = nan.
    - The paper's pair weights (|S| / |S_1| for similar pairs, |S| / |S_0|
      for dissimilar ones) are the caller's (`balanced_pair_weights`).

    Args:
        hamming_distance: d >= 0, e.g. `cosine_hamming_distances`, any shape.
        similarity: s, 1 for similar pairs and 0 for dissimilar ones,
            broadcastable to `hamming_distance`.
        gamma: the Cauchy scale, > 0 (the paper's and DeepHash-pytorch's
            default: 20).

    Returns:
        one loss per pair, shaped like `hamming_distance`.
    """
    near = ops.log1p(ops.maximum(hamming_distance, 0.0) / gamma)
    far = ops.log1p(gamma / ops.maximum(hamming_distance, _DISTANCE_FLOOR))
    return similarity * near + (1.0 - similarity) * far


# --------------------------------------------------------------------------
# Quantization: one value per row of relaxed codes u (n, K)


def quantization_l2(codes):
    """The squared distance of codes to their binary codes:

        l = |b - u|^2 = sum_k (|u_k| - 1)^2,  b = sign(u) in {-1, +1}^K

    (DPSH's eta |b - u|^2, thulab's DHN code per bit: `QuantizationLoss("squared")`
    is this over K). At u_k = 0 either sign gives 1.

    Args:
        codes: (n, K) relaxed codes u.

    Returns:
        (n,) one loss per row.
    """
    return ops.sum(ops.square(ops.abs(codes) - 1.0), axis=-1)


def quantization_log_cosh(codes):
    """DHN's quantization loss (Zhu, Long, Wang, Cao; AAAI 2016):

        l = sum_k log cosh(|u_k| - 1)

    the smoothed form of the bimodal Laplacian prior sum_k ||u_k| - 1|:
    quadratic near +-1, linear far from it.

    - log cosh x = x + softplus(-2x) - log 2: finite for any x (cosh
      overflows float32 past x = 89).

    Args:
        codes: (n, K) relaxed codes u.

    Returns:
        (n,) one loss per row.
    """
    gap = ops.abs(codes) - 1.0
    return ops.sum(gap + ops.softplus(-2.0 * gap) - math.log(2.0), axis=-1)


def quantization_abs_one(codes):
    """DSH's regularizer (Liu, Wang, Shan, Chen; CVPR 2016):

        l = || |u| - 1 ||_1 = sum_k ||u_k| - 1|

    the L1 pull of each output towards -1 or +1 (DSH weighs it by alpha).

    Args:
        codes: (n, K) relaxed codes u.

    Returns:
        (n,) one loss per row.
    """
    return ops.sum(ops.abs(ops.abs(codes) - 1.0), axis=-1)


def cauchy_quantization(codes, gamma):
    """DCH's Cauchy quantization loss (Cao, Long, Liu, Wang; CVPR 2018):

        l = log(1 + d_H(|u|, 1) / gamma)
        d_H(|u|, 1) = K / 2 * (1 - cos(|u|, 1)) = K / 2 * (1 - sum_k |u_k| / (sqrt(K) |u|))

    zero when every |u_k| is equal, i.e. sign(u) scaled: the distance is the
    cosine one of the pairwise loss, so only the codes' directions matter.

    - The cosine is not clipped (the paper; DeepHash-pytorch clips it at
      0.99 here too, which stops this loss short of 0): no log d appears.
    - A zero row has cosine 0 (the norm is floored): l = log(1 + K / (2 gamma)).

    Args:
        codes: (n, K) relaxed codes u.
        gamma: the Cauchy scale, > 0 (the paper's default: 20).

    Returns:
        (n,) one loss per row.
    """
    bits = codes.shape[-1]
    magnitudes = ops.abs(codes)
    norms = ops.sqrt(ops.sum(ops.square(magnitudes), axis=-1)) * math.sqrt(bits)
    cosine = ops.sum(magnitudes, axis=-1) / ops.maximum(norms, _NORM_FLOOR)
    return ops.log1p(0.5 * bits * (1.0 - cosine) / gamma)


# --------------------------------------------------------------------------
# Adversarial


def real_fake(logits, is_real):
    """A discriminator's sigmoid cross-entropy, per example:

        l = -y log sigmoid(x) - (1 - y) log(1 - sigmoid(x))
          = max(x, 0) - x * y + log(1 + e^-|x|)

    for logit x and target y = 1 ("real") or 0 ("fake"). Every GAN in tfhash
    scores its players with it: the discriminator with real -> 1, fake -> 0,
    a generator with its fakes -> 1 (the non-saturating -log D(G(z))).

    - The stable form on the right, with TensorFlow's branches at x = 0
      (gradient sigmoid(0) - y there), so it matches
      `tf.nn.sigmoid_cross_entropy_with_logits` in value and gradient.

    Args:
        logits: x, (n,) discriminator logits.
        is_real: True (y = 1) or False (y = 0) for the whole batch, or targets
            in [0, 1] broadcastable to `logits`.

    Returns:
        one loss per logit, shaped like `logits`.
    """
    if isinstance(is_real, bool):
        targets = ops.ones_like(logits) if is_real else ops.zeros_like(logits)
    else:
        targets = ops.cast(is_real, logits.dtype)
    positive = ops.greater_equal(logits, 0)
    relu_logits = ops.where(positive, logits, ops.zeros_like(logits))
    neg_abs_logits = ops.where(positive, -logits, logits)
    return relu_logits - logits * targets + ops.log1p(ops.exp(neg_abs_logits))


# --------------------------------------------------------------------------
# DHN's terms as objects


@keras.saving.register_keras_serializable(package="tfhash")
class PairwiseCrossEntropy:
    """DHN's pairwise cross-entropy on inner products of relaxed codes.

    For a pair with similarity s_ij and inner product t_ij = alpha * <z_i, z_j>:
        l_ij = log(1 + exp(t_ij)) - s_ij * t_ij
    the negative log-likelihood of s_ij under sigmoid(t_ij) (Zhu et al., AAAI
    2016): `pairwise_likelihood(t, s)`.

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
        pair_loss = pairwise_likelihood(t, s)
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
        variant: "log_cosh" is DHN's paper: `quantization_log_cosh`,
            sum_k log cosh(|z_k| - 1), the smoothed bimodal Laplacian prior.
            "squared" is thulab's code: `quantization_l2` over K,
            mean_k (|z_k| - 1)^2.
    """

    def __init__(self, variant="log_cosh"):
        if variant not in QUANTIZATION_VARIANTS:
            raise ValueError(
                f"variant must be one of {QUANTIZATION_VARIANTS}. Received: variant={variant!r}"
            )
        self.variant = variant

    def __call__(self, z):
        if self.variant == "log_cosh":
            return quantization_log_cosh(z)
        return quantization_l2(z) / z.shape[-1]

    def get_config(self):
        return {"variant": self.variant}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
