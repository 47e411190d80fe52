import keras
import numpy as np
import pytest
import tensorflow as tf

from tfhash.layers import HashLayer, SignPack, check_bits
from tfhash import losses
from tfhash.losses import (
    QUANTIZATION_VARIANTS,
    PairwiseCrossEntropy,
    QuantizationLoss,
    balanced_pair_weights,
    label_similarity,
)


def test_sign_pack_matches_np_packbits():
    rng = np.random.default_rng(0)
    for bits in (8, 16, 24, 64):
        z = rng.normal(size=(50, bits)).astype("float32")
        z[0, :4] = 0.0  # sign(0) counts as +1 (bit set), as np.packbits(z >= 0)
        got = SignPack()(z).numpy()
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, np.packbits(z >= 0, axis=-1))


def test_sign_pack_golden_msb_first():
    # Bits 1 0 0 0 0 0 0 1 -> 0b10000001 = 129; bit 0 of the code is the MSB.
    z = np.array([[0.3, -1, -1, -1, -1, -1, -1, 0.9, -1, -1, -1, -1, -1, -1, 1, -1]], "float32")
    np.testing.assert_array_equal(SignPack()(z).numpy(), [[129, 2]])


def test_hash_layer_range_and_config_round_trip():
    layer = HashLayer(bits=16, name="h")
    z = layer(np.random.default_rng(0).normal(size=(4, 7)).astype("float32") * 100).numpy()
    assert z.shape == (4, 16) and np.abs(z).max() <= 1.0
    clone = HashLayer.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("bits", [0, 12, -8, 8.0, True, "32"])
def test_bits_must_be_positive_multiple_of_8(bits):
    with pytest.raises(ValueError, match=r"multiple of 8.*Received: bits="):
        check_bits(bits)


def test_label_similarity_single_and_multi_label():
    # Class ids: items 0 and 2 share class 1.
    s = label_similarity(np.array([1, 0, 1]), np.array([1, 0, 1])).numpy()
    np.testing.assert_array_equal(s, [[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    # Multi-hot: item 0 {a, b}, item 1 {b}, item 2 {c}: 0~1 share b, 2 shares nothing.
    labels = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    s = label_similarity(labels, labels).numpy()
    np.testing.assert_array_equal(s, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])


def test_pairwise_cross_entropy_golden():
    # z0 = (1, 0), z1 = (0, 1), different classes. Row 0 pairs:
    #   with itself: t = 1, s = 1 -> log(1 + e) - 1 = 0.313262
    #   with z1:     t = 0, s = 0 -> log 2        = 0.693147
    # mean over the row: 0.503204. Row 1 is the same by symmetry.
    z = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    labels = np.array([0, 1])
    loss = PairwiseCrossEntropy()(z, labels, z, labels).numpy()
    np.testing.assert_allclose(loss, [0.503204, 0.503204], atol=1e-6)
    # Balanced, on z0, z1, z2 = (1, 0), (0, 1), (0, 1) with classes 0, 1, 1: 9 pairs,
    # P = 5 similar, so similar pairs weigh T / P = 9 / 5 = 1.8 and dissimilar ones 1.
    # Row 0 (class 0): (1.8 * 0.313262 + 2 * 0.693147) / 3 = 0.650055
    # Rows 1 and 2 (class 1): t = 0 with z0 (dissimilar), t = 1 with z1, z2 (similar):
    #   (0.693147 + 2 * 1.8 * 0.313262) / 3 = 0.606963
    columns, column_labels = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], "float32"), np.array([0, 1, 1])
    balanced = PairwiseCrossEntropy(balanced=True)
    loss = balanced(columns, column_labels, columns, column_labels).numpy()
    np.testing.assert_allclose(loss, [0.650055, 0.606963, 0.606963], atol=1e-6)
    # One replica's share (row 0) against the gathered columns: the balance is
    # counted among the columns (weight 1.8), so it is row 0's value above; counted
    # over row 0's own 3 pairs (1 similar: weight 3) it would be 0.775360.
    loss = balanced(columns[:1], column_labels[:1], columns, column_labels).numpy()
    np.testing.assert_allclose(loss, [0.650055], atol=1e-6)
    # alpha = 2 doubles t: with itself log(1 + e^2) - 2 = 0.126928; mean with log 2: 0.410038
    loss = PairwiseCrossEntropy(alpha=2.0)(z, labels, z, labels).numpy()
    np.testing.assert_allclose(loss, [0.410038, 0.410038], atol=1e-6)


def test_pairwise_cross_entropy_is_finite_for_large_products():
    z = np.full((2, 64), 1.0, "float32")
    loss = PairwiseCrossEntropy(alpha=10.0)(z, np.array([0, 1]), z, np.array([0, 1])).numpy()
    # t = 640, s = 0 for the cross pair: softplus(640) = 640 exactly; s = 1 pair: 0.
    np.testing.assert_allclose(loss, [320.0, 320.0], rtol=1e-6)


def test_balanced_pair_weights_with_known_columns_golden():
    # SSAH's use: rows against a memory whose third row is not known yet (known = 0).
    # Counted pairs (2 rows x the 2 known columns): [[1, 0], [1, 1]]: P = 3 of T = 4,
    # so similar pairs weigh 4 / 3, dissimilar ones 1, unknown ones 0.
    s = np.array([[1.0, 0.0, 0.0]], "float32")
    counted = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], "float32")
    known = np.array([[1.0, 1.0, 0.0]], "float32")
    weights = keras.ops.convert_to_numpy(balanced_pair_weights(s, counted, known=known))
    np.testing.assert_allclose(weights, [[4 / 3, 1.0, 0.0]], rtol=1e-6)
    # Without a mask: 6 pairs, P = 3: similar pairs weigh 2. A {-1, +1} matrix
    # (BGAN's S) counts its +1 entries as similar.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(balanced_pair_weights(s, counted)), [[2.0, 1.0, 1.0]])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(balanced_pair_weights(2 * s - 1, 2 * counted - 1)),
                               [[2.0, 1.0, 1.0]])


def test_balanced_pair_weights_of_both_classes_golden():
    # DCH's and HashNet's |S| / |S_1|, |S| / |S_0|. Counted [[1, 0], [1, 1]] without a mask: P = 3 of
    # T = 4: similar 4 / 3, dissimilar 4 / 1. With DCH's pairs of two rows (the diagonal not counted):
    # (0, 1) dissimilar, (1, 0) similar, P = 1 of T = 2: both weigh 2; `known` zeroes row 0's own pair.
    s, counted = np.array([[1.0, 0.0]], "float32"), np.array([[1.0, 0.0], [1.0, 1.0]], "float32")
    np.testing.assert_allclose(_np(balanced_pair_weights(s, counted, balance_dissimilar=True)), [[4 / 3, 4.0]])
    two_rows = 1.0 - np.eye(2, dtype="float32")
    weights = balanced_pair_weights(s, counted, known=two_rows[:1], counted_known=two_rows, balance_dissimilar=True)
    np.testing.assert_allclose(_np(weights), [[0.0, 2.0]])


def test_quantization_losses_golden():
    z = np.array([[1.0, 0.0], [-1.0, -1.0]], "float32")
    # log_cosh: row 0 = log cosh(0) + log cosh(-1) = 0 + 0.433781; row 1 = 0.
    np.testing.assert_allclose(QuantizationLoss("log_cosh")(z).numpy(), [0.433781, 0.0], atol=1e-6)
    # squared: mean((|z| - 1)^2): row 0 = (0 + 1) / 2 = 0.5.
    np.testing.assert_allclose(QuantizationLoss("squared")(z).numpy(), [0.5, 0.0], atol=1e-6)
    # log cosh stays finite far from +-1 (naive cosh overflows at ~89).
    assert np.isfinite(QuantizationLoss()(np.array([[200.0]], "float32")).numpy()).all()


def test_loss_options_are_checked():
    with pytest.raises(ValueError, match="variant must be one of.*Received: variant='l1'"):
        QuantizationLoss("l1")
    with pytest.raises(ValueError, match="alpha must be positive. Received: alpha=0"):
        PairwiseCrossEntropy(alpha=0)
    assert keras.saving.get_registered_object("tfhash>PairwiseCrossEntropy") is PairwiseCrossEntropy


# --------------------------------------------------------------------------
# The loss library's per-example functions: golden values by hand, in float64


def _np(x):
    return keras.ops.convert_to_numpy(x)


def f64(*rows):
    return np.array(rows, "float64")


def test_pairwise_likelihood_golden():
    # theta = <u_i, u_j> / 2 (DPSH) for u = (1, 1), (1, 1), (-1, -1):
    #   theta = 1, s = 1: log(1 + e) - 1 = 0.313262;  theta = 1, s = 0: log(1 + e) = 1.313262
    #   theta = -1, s = 0: log(1 + e^-1) = 0.313262;  theta = -1, s = 1: log(1 + e^-1) + 1 = 1.313262
    # theta = 0: log 2 whatever s. theta = 800, s = 0: 800 (e^800 overflows float64); s = 1: 0.
    u = f64([1, 1], [1, 1], [-1, -1])
    theta = 0.5 * u[:1] @ u.T  # [[1, 1, -1]]
    loss = _np(losses.pairwise_likelihood(theta, f64([1, 0, 0])))
    np.testing.assert_allclose(loss, [[0.3132616875182228, 1.3132616875182228, 0.31326168751822286]], rtol=1e-15)
    np.testing.assert_allclose(_np(losses.pairwise_likelihood(f64(-1, 0, 0), f64(1, 1, 0))),
                               [1.3132616875182228, 0.6931471805599453, 0.6931471805599453], rtol=1e-15)
    np.testing.assert_array_equal(_np(losses.pairwise_likelihood(f64(800, 800), f64(0, 1))), [800, 0])


def test_pairwise_likelihood_is_the_copies_it_replaced_bit_for_bit():
    # SSAH's _neg_log_likelihood and PairwiseCrossEntropy's inline pair loss were
    # both softplus(theta) - s * theta.
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64"):
        theta, s = (rng.normal(size=(6, 9)) * 20).astype(dtype), (rng.random((6, 9)) < 0.3).astype(dtype)
        old = keras.ops.softplus(theta) - s * theta
        np.testing.assert_array_equal(_np(losses.pairwise_likelihood(theta, s)), _np(old))


def test_contrastive_golden():
    # DSH on K = 2 bits, m = 2K = 4. Codes b1 = (1, 1), b2 = (1, -1): d = 4;
    # b3 = (0, 1): d(b1, b3) = 1, d(b2, b3) = 1 + 4 = 5.
    codes = f64([1, 1], [1, -1], [0, 1])
    d = _np(losses.squared_euclidean_distances(codes, codes))
    np.testing.assert_allclose(d, [[0, 4, 1], [4, 0, 5], [1, 5, 0]], atol=1e-15)
    # The pairs (b1, b2), (b1, b3), (b2, b3) at d = 4, 1, 5, similar (row 0) and
    # dissimilar (row 1), and three dissimilar pairs at d = 0 (row 2):
    # similar: d / 2 = 2, 0.5, 2.5; dissimilar: max(0, 4 - d) / 2 = 0, 1.5, 0 and m / 2 = 2 at d = 0.
    s = f64([1, 1, 1], [0, 0, 0], [0, 0, 0])
    pairs = f64([4, 1, 5], [4, 1, 5], [0, 0, 0])
    np.testing.assert_allclose(_np(losses.contrastive(pairs, s, 4.0)), [[2, 0.5, 2.5], [0, 1.5, 0], [2, 2, 2]],
                               rtol=1e-15)


def test_triplet_ranking_golden():
    # m = 2. Row 0: near = |(0, -0.5)|^2 = 0.25, far = |(1, 0)|^2 = 1: 2 + 0.25 - 1 = 1.25.
    # Row 1: near = 0, far = 1 + 1 = 2: max(0, 2 + 0 - 2) = 0 (margin met exactly).
    # Row 2: near = 0.5, far = 0 (negative = anchor): 2.5.
    anchor = f64([1, 0], [1, 0], [0.5, 0.5])
    positive = f64([1, 0.5], [1, 0], [0, 0])
    negative = f64([0, 0], [0, 1], [0.5, 0.5])
    np.testing.assert_allclose(_np(losses.triplet_ranking(anchor, positive, negative, 2.0)), [1.25, 0.0, 2.5],
                               rtol=1e-15)


def test_triplet_ranking_is_the_copies_it_replaced():
    rng = np.random.default_rng(1)
    for dtype in ("float32", "float64"):
        a, p, n = (tf.sigmoid(rng.normal(size=(64, 16)).astype(dtype)) for _ in range(3))
        margin = 0.25
        near = tf.reduce_sum(tf.square(a - p), axis=-1)
        far = tf.reduce_sum(tf.square(a - n), axis=-1)
        got = _np(losses.triplet_ranking(a, p, n, margin))
        assert 0 < (got > 0).mean() < 1  # both sides of the hinge
        # UGACH's relevance_hinge(query, related, picked, m): the same sums, the same order.
        np.testing.assert_array_equal(got, _np(tf.nn.relu(margin + near - far)))
        # DSH-GAN's triplet_ranking_loss added in the other order, (m - far) + near:
        # equal up to the rounding of one addition.
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(got, _np(tf.nn.relu(margin - far + near)), rtol=0,
                                   atol=4 * eps * float(tf.reduce_max(margin + near + far)))


def test_cosine_hamming_distances_golden():
    # On {-1, +1}^4 codes d_H = K/2 (1 - cos) is the Hamming distance:
    # a = (1, 1, 1, 1), b = (1, 1, -1, -1): cos 0, d = 2; c = -a: cos -1, d = 4.
    # 2a: the same direction, d = 0 unclipped; clipped at cos 0.99: 2 * 0.01 = 0.02.
    # The zero code: cosine 0 with everything, d = K/2 = 2.
    a = f64([1, 1, 1, 1])
    columns = f64([1, 1, -1, -1], [-1, -1, -1, -1], [2, 2, 2, 2], [0, 0, 0, 0])
    np.testing.assert_allclose(_np(losses.cosine_hamming_distances(a, columns, max_cosine=None)), [[2, 4, 0, 2]],
                               atol=1e-15)
    np.testing.assert_allclose(_np(losses.cosine_hamming_distances(a, columns)), [[2, 4, 0.02, 2]], rtol=1e-12)


def test_cauchy_cross_entropy_golden():
    # gamma = 2, p(similar) = gamma / (gamma + d):
    #   d = 6, s = 1: -log(2/8) = log 4 = 1.386294;  d = 6, s = 0: -log(6/8) = log(4/3) = 0.287682
    #   d = 2, s = 0: -log(2/4) = log 2 = 0.693147;  d = 0.5, s = 1: -log(2/2.5) = log 1.25 = 0.223144
    d, s = f64([6, 6], [2, 0.5]), f64([1, 0], [0, 1])
    loss = _np(losses.cauchy_cross_entropy(d, s, 2.0))
    np.testing.assert_allclose(loss, [[1.3862943611198906, 0.28768207245178085], [0.6931471805599453,
                                                                                  0.22314355131420976]], rtol=1e-15)
    # The paper's form s log(d / gamma) + log(1 + gamma / d), on a spread of d > 0 and soft s.
    rng = np.random.default_rng(2)
    d, s = rng.uniform(0.01, 64, size=(5, 7)), rng.random((5, 7))
    np.testing.assert_allclose(_np(losses.cauchy_cross_entropy(d, s, 20.0)),
                               s * np.log(d / 20.0) + np.log1p(20.0 / d), rtol=1e-13)


def test_cauchy_cross_entropy_is_finite_at_distance_zero():
    # Parallel codes, d = 0: a similar pair costs log 1 = 0 (weighing both terms, 0 * inf was nan), a
    # dissimilar one log(1 + gamma / 1e-6), d floored; a rounding below 0 reads 0. Gradients finite.
    d, s = tf.constant(f64(0.0, 0.0, -1e-15)), tf.constant(f64(1.0, 0.0, 1.0))
    with tf.GradientTape() as tape:
        tape.watch(d)
        loss = losses.cauchy_cross_entropy(d, s, 2.0)
    np.testing.assert_array_equal(_np(loss), [0.0, np.log1p(2.0 / 1e-6), 0.0])
    assert np.isfinite(_np(tape.gradient(loss, d))).all()


def test_dch_and_hashnet_pieces_are_the_copies_they_replaced_bit_for_bit():
    # DCH's class_balanced_weights and cauchy_pair_loss, HashNet's hashnet_pair_weights, IDHN's
    # soft_label_similarity, as they were written in the modules, against the library.
    ops, rng = keras.ops, np.random.default_rng(3)
    for dtype in ("float32", "float64"):
        y = (rng.random((9, 4)) < 0.4).astype(dtype)
        among = _np(label_similarity(y, y)).astype(dtype)
        s, two_rows, others = among[:4], 1 - np.eye(9, dtype=dtype), 1 - np.eye(4, 9, dtype=dtype)
        total, positives = np.sum(two_rows), np.sum(among * two_rows)
        dch = (s * (total / max(positives, 1)) + (1 - s) * (total / max(total - positives, 1))) * others
        got = balanced_pair_weights(s, among, known=others, counted_known=two_rows, balance_dissimilar=True)
        np.testing.assert_array_equal(_np(got), dch.astype(dtype))
        total, positives = among.size, np.sum(among)
        hashnet = s * (total / max(positives, 1)) + (1 - s) * (total / max(total - positives, 1))
        np.testing.assert_array_equal(_np(balanced_pair_weights(s, among, balance_dissimilar=True)), hashnet)
        d = np.concatenate([[0.0, -1e-15, 1e-9], rng.uniform(0, 40, 97)]).astype(dtype)
        similar = (rng.random(100) < 0.5).astype(dtype)
        dch = ops.where(similar > 0.5, ops.log1p(ops.maximum(d, 0.0) / 20.0), ops.log1p(20.0 / ops.maximum(d, 1e-6)))
        np.testing.assert_array_equal(_np(losses.cauchy_cross_entropy(d, similar, 20.0)), _np(dch))
        a, b = ops.cast(y, "float32"), ops.cast(y[:5], "float32")
        norms = ops.expand_dims(ops.sqrt(ops.sum(ops.square(a), axis=1)), 1) * ops.expand_dims(
            ops.sqrt(ops.sum(ops.square(b), axis=1)), 0)
        idhn = ops.matmul(a, ops.transpose(b)) / ops.maximum(norms, 1e-12)
        np.testing.assert_array_equal(_np(losses.soft_label_similarity(y, y[:5])), _np(idhn))


def test_soft_label_similarity_and_label_overlap_golden():
    # y1 = {a}, y2 = {a, b, c, d}, y3 = {} (no labels): cosines 1 / (1 * 2) = 1/2 and 0; Jaccard
    # |{a}| / |{a, b, c, d}| = 1/4, and 0 for the empty row. Class ids: label_similarity's 0/1.
    y = f64([1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0])
    np.testing.assert_allclose(_np(losses.soft_label_similarity(y, y)), [[1, 0.5, 0], [0.5, 1, 0], [0, 0, 0]],
                               rtol=1e-7)
    np.testing.assert_allclose(_np(losses.label_overlap(y, y)), [[1, 0.25, 0], [0.25, 1, 0], [0, 0, 0]])
    ids = np.array([0, 0, 1])
    np.testing.assert_array_equal(_np(losses.soft_label_similarity(ids, ids)), _np(label_similarity(ids, ids)))


def test_triplet_likelihood_golden():
    # -log sigmoid(theta_qp - theta_qn - m): at 1 + 1 - 1 = 1, log(1 + e^-1); at -1 - 1 - 1 = -3, log(1 + e^3).
    loss = losses.triplet_likelihood(f64(1.0, -1.0), f64(-1.0, 1.0), 1.0)
    np.testing.assert_allclose(_np(loss), [np.log1p(np.exp(-1.0)), np.log1p(np.exp(3.0))], rtol=1e-15)


def test_cauchy_quantization_golden():
    # gamma = 2, K = 4: d_H(|u|, 1) = 2 (1 - sum|u| / (2 |u|)).
    #   (1, -1, 1, -1) and (3, -3, 3, -3): |u| constant, cos 1: log 1 = 0.
    #   (1, 0, 0, 0): cos = 1 / 2, d = 1: log(1 + 1/2) = 0.405465.
    #   (0, 0, 0, 0): cos 0, d = 2: log 2.
    u = f64([1, -1, 1, -1], [3, -3, 3, -3], [1, 0, 0, 0], [0, 0, 0, 0])
    np.testing.assert_allclose(_np(losses.cauchy_quantization(u, 2.0)), [0, 0, 0.4054651081081644, 0.6931471805599453],
                               rtol=1e-15, atol=1e-15)


def test_quantization_variants_golden():
    u = f64([1, 0], [-1, -1], [0.5, -2])
    # l2, |sign(u) - u|^2 = sum (|u| - 1)^2: row 0 = 0 + 1; row 2 = 0.25 + 1.
    np.testing.assert_allclose(_np(losses.quantization_l2(u)), [1, 0, 1.25], rtol=1e-15)
    # abs_one, sum ||u| - 1|: row 0 = 0 + 1; row 2 = 0.5 + 1.
    np.testing.assert_allclose(_np(losses.quantization_abs_one(u)), [1, 0, 1.5], rtol=1e-15)
    # log cosh: row 0 = log cosh(0) + log cosh(-1) = 0.433781; row 2 = log cosh(-0.5) + log cosh(1)
    # = 0.120115 + 0.433781. Far from +-1, log cosh x ~ x - log 2: (1000, 1) -> 999 - log 2.
    np.testing.assert_allclose(_np(losses.quantization_log_cosh(u)),
                               [0.4337808304830271, 0, 0.12011450695827745 + 0.4337808304830271], rtol=1e-15)
    np.testing.assert_allclose(_np(losses.quantization_log_cosh(f64([1000, 1]))), 998.3068528194401, rtol=1e-15)


def test_quantization_loss_is_its_old_formulas_bit_for_bit():
    rng = np.random.default_rng(3)
    for dtype in ("float32", "float64"):
        # Exact zeros too: there |z| has a kink, and the gradient must stay the old one.
        z = tf.constant(np.r_[np.zeros((1, 32)), np.tanh(rng.normal(size=(11, 32)) * 2)].astype(dtype))
        for variant in QUANTIZATION_VARIANTS:
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(z)
                new_loss = QuantizationLoss(variant)(z)
                gap = keras.ops.abs(z) - 1.0
                old_loss = (keras.ops.mean(keras.ops.square(gap), axis=-1) if variant == "squared" else
                            keras.ops.sum(gap + keras.ops.softplus(-2.0 * gap) - np.log(2.0), axis=-1))
            np.testing.assert_array_equal(_np(new_loss), _np(old_loss))
            np.testing.assert_array_equal(_np(tape.gradient(new_loss, z)), _np(tape.gradient(old_loss, z)))


def test_real_fake_golden_and_as_tensorflows():
    # Real (y = 1): -log sigmoid(x): x = 0: log 2; x = 2: log(1 + e^-2) = 0.126928; x = -3: log(1 + e^3) = 3.048587.
    # Fake (y = 0): -log(1 - sigmoid(x)) = log(1 + e^x): 0.693147, 2.126928, 0.048587.
    x = f64(0, 2, -3)
    np.testing.assert_allclose(_np(losses.real_fake(x, True)), [0.6931471805599453, 0.1269280110429725,
                                                                 3.048587351573742], rtol=1e-15)
    np.testing.assert_allclose(_np(losses.real_fake(x, False)), [0.6931471805599453, 2.1269280110429727,
                                                                  0.04858735157374206], rtol=1e-15)
    # Per-example targets: y = 0.5 at x = 2: log(1 + e^-2) + 2 * 0.5 = 1.126928.
    np.testing.assert_allclose(_np(losses.real_fake(x, f64(1, 0.5, 0))), [0.6931471805599453, 1.1269280110429725,
                                                                           0.04858735157374206], rtol=1e-15)
    # Bit for bit tf.nn.sigmoid_cross_entropy_with_logits (what the GANs used before),
    # value and gradient, x = 0 included (gradient sigmoid(0) - y = -0.5 for y = 1).
    def real_fake_loss(logits, real):
        target = tf.ones_like(logits) if real else tf.zeros_like(logits)
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits)

    logits = tf.constant(np.r_[0.0, np.random.default_rng(4).normal(size=31) * 5].astype("float32"))
    for real in (True, False):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(logits)
            new, old = losses.real_fake(logits, real), real_fake_loss(logits, real)
        np.testing.assert_array_equal(_np(new), _np(old))
        gradient = _np(tape.gradient(new, logits))
        np.testing.assert_array_equal(gradient, _np(tape.gradient(old, logits)))
        # (relu(x) and |x| with their own gradients at 0 would give -1 here, or 0.)
        assert gradient[0] == pytest.approx(-0.5 if real else 0.5, abs=1e-6)


def test_pair_similarity_is_label_similarity_and_its_old_numpy_formula():
    from tfhash.data import pair_similarity

    rng = np.random.default_rng(5)
    ids_a, ids_b = rng.integers(0, 4, 9), rng.integers(0, 4, 7)
    hot_a, hot_b = (rng.random((9, 5)) < 0.3).astype(np.int64), (rng.random((7, 5)) < 0.3).astype(np.int64)
    for a, b, old in (
        (ids_a, ids_b, (ids_a[:, None] == ids_b[None, :]).astype(np.float32)),
        (hot_a, hot_b, ((hot_a.astype(np.float32) @ hot_b.T.astype(np.float32)) > 0).astype(np.float32)),
    ):
        got = pair_similarity(a, b)
        assert isinstance(got, np.ndarray) and got.dtype == np.float32
        np.testing.assert_array_equal(got, old)
        np.testing.assert_array_equal(got, _np(label_similarity(a, b)))


def test_sign_pack_converts_to_tflite_builtins_and_matches_np_packbits():
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    inputs = keras.Input((24,), batch_size=1)
    model = keras.Model(inputs, SignPack()(inputs))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # Builtins only: conversion fails if packing needed Flex ops (left_shift would).
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    z = np.random.default_rng(1).normal(size=(1, 24)).astype("float32")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], z)
    interpreter.invoke()
    packed = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_array_equal(packed, np.packbits(z >= 0, axis=-1))


def test_hash_layer_activations_and_the_sign_straight_through_gradient():
    # One kernel for the three heads, so each output is a function of the same projection x.
    x_in = np.random.default_rng(2).normal(size=(6, 5)).astype("float32")
    heads = {a: HashLayer(bits=8, activation=a, name=a) for a in ("tanh", "identity", "sign")}
    for layer in heads.values():
        layer.build((None, 5))
        layer.set_weights(heads["tanh"].get_weights())
    x = heads["identity"](x_in).numpy()
    np.testing.assert_allclose(heads["tanh"](x_in).numpy(), np.tanh(x), rtol=1e-6)
    # sign: exactly +-1, sign(0) = +1 (the bit convention of SignPack).
    np.testing.assert_array_equal(heads["sign"](x_in).numpy(), np.where(x >= 0, 1.0, -1.0))
    # Straight-through: backward, sign is the identity. A loss weighted per unit sees
    # the same gradient through both heads, on the kernel and the bias.
    weights = tf.constant(np.random.default_rng(3).normal(size=(6, 8)).astype("float32"))

    def gradient(layer):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(weights * layer(x_in))
        return tape.gradient(loss, layer.trainable_variables)

    for through_sign, through_identity in zip(gradient(heads["sign"]), gradient(heads["identity"]), strict=True):
        np.testing.assert_array_equal(through_sign.numpy(), through_identity.numpy())
    clone = HashLayer.from_config(heads["sign"].get_config())
    assert clone.activation == "sign" and clone.get_config() == heads["sign"].get_config()
    # A layer saved before the option existed (no "activation" in its config) is tanh.
    config = heads["tanh"].get_config()
    del config["activation"]
    assert HashLayer.from_config(config).activation == "tanh"
    with pytest.raises(ValueError, match=r"activation must be one of \('tanh', 'identity', 'sign'\). "
                                         r"Received: activation='relu'"):
        HashLayer(bits=8, activation="relu")
