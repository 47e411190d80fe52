"""GreedyHash on scikit-learn digits: its loss by hand, its straight-through sign, that it learns.
The shared checks (run directory, config, saving, export, N replicas = one device,
an ImageNet trunk) run for it from the registry (tests/test_methods.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from method_checks import float64  # noqa: F401  (a fixture)
from method_checks import weighted as _weighted
from tfhash import metrics, training
from tfhash.data import load_protocol
from tfhash.models.greedyhash import GreedyHash

# log(1 + e^-2): the softmax cross-entropy of logits (2, 0) for class 0 (and of (-2, 0) for class 1).
LOG1P_EXP_MINUS_2 = 0.1269280110429725
SIGMOID_2 = 0.8807970779778823


@pytest.fixture(scope="module")
def digits():
    return load_protocol("digits")


def _model():
    # Two classes, the classifier fixed by hand: class 0's weights 0.25 on every bit, class 1's zero,
    # so the logits of a code b are (sum(b) / 4, 0).
    model = GreedyHash(bits=8, input_shape=(8, 8, 1), num_classes=2)
    model.classifier.kernel.assign(np.stack([np.full(8, 0.25), np.zeros(8)], axis=1))
    return model


def _codes():
    # h1 = 0.5 everywhere: b1 = +1s, ||h| - 1|^3 = 0.125 per bit.
    # h2 = -2 everywhere: b2 = -1s, ||h| - 1|^3 = 1 per bit.
    # h3 = +-1, four of each: b3 = h3, penalty 0, sum(b3) = 0.
    return np.stack([np.full(8, 0.5), np.full(8, -2.0), np.repeat([1.0, -1.0], 4)])


def test_three_items_loss_by_hand(float64):
    # Logits: b1 -> (2, 0), b2 -> (-2, 0), b3 -> (0, 0). Labels 0, 1, 0: the first two cost
    # log(1 + e^-2) each (the right class 2 logits ahead), the third log 2 (a tie of two classes).
    # Penalty, the mean over the bits: 0.125, 1, 0, weighed by alpha = 0.1.
    model = _model()
    codes = keras.ops.convert_to_tensor(_codes())
    labels = keras.ops.convert_to_tensor(np.array([0, 1, 0]))
    terms = model.loss_terms(codes, labels, codes, labels, {})
    np.testing.assert_allclose(np.asarray(terms["classification_loss"]),
                               [LOG1P_EXP_MINUS_2, LOG1P_EXP_MINUS_2, np.log(2)], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(terms["quantization_loss"]), [0.125, 1.0, 0.0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(_weighted(model, terms)),
                               [LOG1P_EXP_MINUS_2 + 0.0125, LOG1P_EXP_MINUS_2 + 0.1, np.log(2)], rtol=1e-12)


def test_multi_hot_labels_take_the_sigmoid_cross_entropy_per_class(float64):
    # Row 1 has both classes: logits (2, 0) cost softplus(-2) = log(1 + e^-2) for class 0 and
    # softplus(0) = log 2 for class 1, averaged. Row 2 has class 1 only: logits (-2, 0) cost
    # softplus(-2) for class 0 (absent, logit -2) and log 2. Row 3 has none: logits (0, 0), log 2 each.
    model = _model()
    codes = keras.ops.convert_to_tensor(_codes())
    labels = keras.ops.convert_to_tensor(np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))
    terms = model.loss_terms(codes, labels, codes, labels, {})
    half = (LOG1P_EXP_MINUS_2 + np.log(2)) / 2
    np.testing.assert_allclose(np.asarray(terms["classification_loss"]), [half, half, np.log(2)], rtol=1e-12)


def test_the_sign_passes_the_gradient_straight_through(float64):
    # Row 1 alone (h = 0.5, b = +1s, class 0): the cross-entropy's gradient on the logits is
    # p - y = (sigmoid(2) - 1, 1 - sigmoid(2)), on each bit of b W (p - y) = 0.25 (sigmoid(2) - 1),
    # and the straight-through sign hands exactly that to h (sign's own gradient is 0). The
    # penalty's, 3 ||h| - 1|^2 sign(|h| - 1) sign(h) / K = -3 * 0.25 / 8, adds alpha times that.
    model = _model()
    h = tf.Variable(np.full((1, 8), 0.5))
    with tf.GradientTape() as tape:
        terms = model.loss_terms(h, tf.constant([0]), h, tf.constant([0]), {})
        loss = tf.reduce_sum(_weighted(model, terms))
    expected = 0.25 * (SIGMOID_2 - 1) + 0.1 * (-3 * 0.25 / 8)
    np.testing.assert_allclose(tape.gradient(loss, h).numpy(), np.full((1, 8), expected), rtol=1e-12)


def test_bad_arguments_fail_in_one_line():
    for kwargs, pattern in [({"activation": "sign"}, r"activation must be one of .*Received: activation='sign'"),
                            ({"multi_label": "max"}, r"multi_label must be one of .*Received: multi_label='max'"),
                            ({"num_classes": 0}, r"num_classes must be a positive integer. Received: num_classes=0")]:
        with pytest.raises(ValueError, match=pattern) as error:
            GreedyHash(bits=8, input_shape=(8, 8, 1), **kwargs)
        assert "\n" not in str(error.value)


@pytest.mark.slow
def test_training_learns_codes_that_retrieve_by_label(digits, tmp_path):
    keras.utils.set_random_seed(0)
    untrained = GreedyHash(bits=16, input_shape=(8, 8, 1), num_classes=10)
    (xq, yq), (xd, yd) = digits.subset("query"), digits.subset("database")
    before = metrics.mean_average_precision(untrained.encode(xq), untrained.encode(xd), yq, yd)
    result = training.train("greedyhash", data=digits, bits=16, seed=0, epochs=8, batch_size=50,
                            output_dir=str(tmp_path), verbose=0)
    after = result.scores["image"]["map"]
    # 10 balanced classes: random codes score about 0.1; training must at least double the
    # untrained encoder's mAP@all on held-out queries.
    assert after > 2 * before and after > 0.4, (before, after)
