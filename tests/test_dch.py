"""DCH on scikit-learn digits: its loss by hand, its pair weights and clip, that it learns.
The shared checks (run directory, config, saving, export, N replicas = one device,
an ImageNet trunk) run for it from the registry (tests/test_methods.py)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from method_checks import float64  # noqa: F401  (a fixture)
from method_checks import weighted as _weighted
from tfhash import metrics, training
from tfhash.data import load_protocol
from tfhash.models.dch import DCH

# K = 8: u1 = (1, ..., 1), u2 = (2, 2, 0, ..., 0), u3 = -u1. Cosines: (u1, u2) 4 / (sqrt 8 sqrt 8) = 1/2,
# (u1, u3) -1, (u2, u3) -1/2; Hamming distances d = K/2 (1 - cos): d12 = 2, d13 = 8, d23 = 6.
CODES = np.stack([np.ones(8), np.array([2.0, 2, 0, 0, 0, 0, 0, 0]), -np.ones(8)])
LOG = math.log


def _terms(model, labels, batch=None):
    codes = keras.ops.convert_to_tensor(CODES)
    labels = keras.ops.convert_to_tensor(np.asarray(labels, dtype="float64"))
    batch = {"index": keras.ops.convert_to_tensor(np.array([4.0, 0.0, 7.0]))} if batch is None else batch
    return model.loss_terms(codes, labels, codes, labels, batch)


def test_three_items_loss_by_hand(float64):
    # gamma = 2, labels 0, 0, 1. The 6 ordered pairs of two rows: 2 similar (1-2, 2-1), 4 dissimilar,
    # so w = 6/2 = 3 for similar pairs and 6/4 = 3/2 for dissimilar ones. Pair losses:
    #   similar log(1 + d / gamma): d12 = 2 -> log 2; dissimilar log(1 + gamma / d): d13 -> log(5/4),
    #   d23 -> log(4/3). Each row: its two pairs, weighted, over n - 1 = 2 (its pair with itself left out).
    # Quantization log(1 + d(|u|, 1) / gamma): u1, u3 have equal magnitudes, 0; |u2| has cosine
    # 4 / (sqrt 8 sqrt 8) = 1/2 with the ones: d = 2, log 2. lambda = 0.1.
    model = DCH(bits=8, input_shape=(8, 8, 1), gamma=2.0)
    terms = _terms(model, [0, 0, 1])
    expected = [(3 * LOG(2) + 1.5 * LOG(5 / 4)) / 2, (3 * LOG(2) + 1.5 * LOG(4 / 3)) / 2,
                (1.5 * LOG(5 / 4) + 1.5 * LOG(4 / 3)) / 2]
    np.testing.assert_allclose(np.asarray(terms["cauchy_loss"]), expected, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(terms["quantization_loss"]), [0, LOG(2), 0], atol=1e-12)
    np.testing.assert_allclose(np.asarray(_weighted(model, terms)), np.add(expected, [0, 0.1 * LOG(2), 0]),
                               rtol=1e-12)


def test_multi_hot_weights_the_clip_and_unbalanced_pairs(float64):
    # Multi-hot [1, 0], [1, 1], [0, 1]: 1 ~ 2 and 2 ~ 3 share a label: 4 similar ordered pairs, 2 dissimilar,
    # w = 6/4 = 3/2 similar, 6/2 = 3 dissimilar. max_cosine 1/4 clips only (u1, u2): d12 = 4 * 3/4 = 3,
    # log(1 + 3/2) = log(5/2). Similar (2, 3) at d = 6: log(1 + 3) = log 4. Dissimilar (1, 3): log(5/4).
    model = DCH(bits=8, input_shape=(8, 8, 1), gamma=2.0, max_cosine=0.25)
    terms = _terms(model, [[1, 0], [1, 1], [0, 1]])
    expected = [(1.5 * LOG(5 / 2) + 3 * LOG(5 / 4)) / 2, (1.5 * LOG(5 / 2) + 1.5 * LOG(4)) / 2,
                (3 * LOG(5 / 4) + 1.5 * LOG(4)) / 2]
    np.testing.assert_allclose(np.asarray(terms["cauchy_loss"]), expected, rtol=1e-12)
    # Unbalanced: every pair of two rows weighs 1.
    model = DCH(bits=8, input_shape=(8, 8, 1), gamma=2.0, max_cosine=0.25, balanced=False)
    terms = _terms(model, [[1, 0], [1, 1], [0, 1]])
    expected = [(LOG(5 / 2) + LOG(5 / 4)) / 2, (LOG(5 / 2) + LOG(4)) / 2, (LOG(5 / 4) + LOG(4)) / 2]
    np.testing.assert_allclose(np.asarray(terms["cauchy_loss"]), expected, rtol=1e-12)


def test_parallel_codes_give_finite_losses_and_gradients(float64):
    # Without the clip (the paper), two distinct rows with the same code are at d = 0: the similar pair costs
    # log 1 = 0, the dissimilar one log(1 + gamma / 1e-6) (the floor), and no gradient is nan.
    # (3, 4, 0, ...) has norm 5 exactly, so its cosine with itself is exactly 1 and d exactly 0.
    model = DCH(bits=8, input_shape=(8, 8, 1))
    codes = keras.ops.convert_to_tensor(np.tile([3.0, 4, 0, 0, 0, 0, 0, 0], (3, 1)))
    labels = keras.ops.convert_to_tensor(np.array([0.0, 0.0, 1.0]))
    batch = {"index": keras.ops.convert_to_tensor(np.array([0.0, 1.0, 2.0]))}
    with tf.GradientTape() as tape:
        tape.watch(codes)
        terms = model.loss_terms(codes, labels, tf.stop_gradient(codes), labels, batch)
        total = tf.reduce_sum(_weighted(model, terms))
    assert np.isfinite(np.asarray(total)) and np.isfinite(np.asarray(tape.gradient(total, codes))).all()


def test_a_rows_pair_with_itself_is_left_out(float64):
    # An unlabelled row (multi-hot zeros) is dissimilar even to itself, at d = 0: left in, its pair would
    # cost log(1 + gamma / 1e-6). Labels [0, 0], [1, 0], [0, 1]: no similar pair, every weight 6/6 = 1;
    # dissimilar pairs log(1 + gamma / d), gamma = 2: d12 = 2 -> log 2, d13 = 8 -> log(5/4), d23 = 6 -> log(4/3).
    model = DCH(bits=8, input_shape=(8, 8, 1), gamma=2.0)
    terms = _terms(model, [[0, 0], [1, 0], [0, 1]])
    expected = [(LOG(2) + LOG(5 / 4)) / 2, (LOG(2) + LOG(4 / 3)) / 2, (LOG(5 / 4) + LOG(4 / 3)) / 2]
    np.testing.assert_allclose(np.asarray(terms["cauchy_loss"]), expected, rtol=1e-12)


@pytest.mark.parametrize("settings, message", [
    ({"gamma": 0.0}, r"gamma must be positive. Received: gamma=0.0"),
    ({"max_cosine": 1.5}, r"max_cosine must be in \(0, 1\], or None for no clip. Received: max_cosine=1.5"),
    ({"quantization_weight": -1.0}, r"quantization_weight must be non-negative. Received: quantization_weight=-1.0"),
])
def test_bad_arguments_fail_in_one_line(settings, message):
    with pytest.raises(ValueError, match=message):
        DCH(bits=8, input_shape=(8, 8, 1), **settings)


@pytest.mark.slow
def test_training_learns_codes_that_retrieve_by_label(tmp_path):
    digits = load_protocol("digits")
    keras.utils.set_random_seed(0)
    untrained = DCH(bits=16, input_shape=(8, 8, 1))
    (xq, yq), (xd, yd) = digits.subset("query"), digits.subset("database")
    before = metrics.mean_average_precision(untrained.encode(xq), untrained.encode(xd), yq, yd)
    result = training.train("dch", data=digits, bits=16, seed=0, epochs=4, batch_size=50,
                            output_dir=str(tmp_path), verbose=0)
    after = result.scores["image"]["map"]
    # 10 balanced classes: random codes score about 0.1; 4 epochs take the untrained encoder's 0.18 to
    # 0.61 (seed 0): training must at least double it.
    assert after > 2 * before and after > 0.4, (before, after)
