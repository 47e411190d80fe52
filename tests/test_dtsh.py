"""DTSH on scikit-learn digits: its triplet loss by hand, its two averages, that it learns.
The shared checks (run directory, config, saving, export, N replicas = one device,
an ImageNet trunk) run for it from the registry (tests/test_methods.py)."""

import keras
import numpy as np
import pytest

import method_checks
from method_checks import float64  # noqa: F401  (a fixture)
from tfhash import metrics, training
from tfhash.data import load_protocol
from tfhash.models.dtsh import DTSH

# -log sigmoid(x) = log(1 + e^-x) at x = 1, 0 and -1.
AT_1, AT_0, AT_MINUS_1 = np.log1p(np.exp(-1.0)), np.log(2.0), np.log1p(np.e)


@pytest.fixture(scope="module")
def digits():
    return load_protocol("digits")


def _codes(*signs):
    # K = 8; a code is s * 0.5 * ones, so Theta = u_i.u_j / 2 = s_i s_j * 8 * 0.25 / 2 = s_i s_j.
    return keras.ops.convert_to_tensor(np.stack([np.full(8, 0.5 * s) for s in signs]))


def _terms(model, codes, labels):
    labels = keras.ops.convert_to_tensor(np.asarray(labels, dtype="float64"))
    return {k: np.asarray(v) for k, v in model.loss_terms(codes, labels, codes, labels, {}).items()}


def test_three_items_loss_by_hand(float64):
    # u1 = u2 = a, u3 = -a, labels 0, 0, 1; margin 1. Theta_12 = 1, Theta_13 = Theta_23 = -1.
    # Triplets (an item is not its own positive): (1, 2, 3) and (2, 1, 3), each at
    # Theta_qp - Theta_qn - alpha = 1 + 1 - 1 = 1, costing -log sigmoid(1); item 3 has no positive.
    # Every triplet weighs alike: the step's loss is their mean, -log sigmoid(1), so the rows carry
    # n / T = 3 / 2 times their own sums: 1.5 AT_1, 1.5 AT_1, 0.
    # Quantization: |sign(u) - u|^2 / K = 8 * 0.25 / 8 = 0.25 per row, weighed by lambda = 1.
    model = DTSH(bits=8, input_shape=(8, 8, 1), margin=1.0)
    terms = _terms(model, _codes(1, 1, -1), [0, 0, 1])
    np.testing.assert_allclose(terms["triplet_loss"], [1.5 * AT_1, 1.5 * AT_1, 0.0], rtol=1e-12)
    np.testing.assert_allclose(terms["quantization_loss"], [0.25] * 3, rtol=1e-12)
    assert np.mean(terms["triplet_loss"]) == pytest.approx(AT_1, rel=1e-12)


def test_the_default_margin_is_half_the_code_length(float64):
    # The three items above at the default alpha = K/2 = 4: each triplet at 1 + 1 - 4 = -2, costing
    # -log sigmoid(-2) = log(1 + e^2); the rows carry 3 / 2 of it, as above.
    model = DTSH(bits=8, input_shape=(8, 8, 1))
    assert model.get_config()["margin"] is None and model.alpha == 4
    terms = _terms(model, _codes(1, 1, -1), [0, 0, 1])
    np.testing.assert_allclose(terms["triplet_loss"], [1.5 * np.log1p(np.e ** 2)] * 2 + [0.0], rtol=1e-12)
    with pytest.raises(ValueError, match=r"margin must be non-negative, or None for bits / 2. Received: margin=-1"):
        DTSH(bits=8, input_shape=(8, 8, 1), margin=-1)


def test_triplet_and_anchor_averages_by_hand(float64):
    # Five items: codes a, a, 0, -a, -a, labels 0, 0, 0, 1, 1; margin 1. Theta is 1 between equal
    # nonzero codes, -1 between a and -a, 0 against the zero code.
    # Anchor 1 (and 2): positives {2: 1, 3: 0}, negatives {4: -1, 5: -1}: x = 1 + 1 - 1 = 1 twice,
    #   0 + 1 - 1 = 0 twice: sum 2 AT_1 + 2 AT_0 over 4 triplets.
    # Anchor 3 (code 0): positives {1, 2}, negatives {4, 5}, every Theta 0: x = -1 four times: 4 AT_-1.
    # Anchor 4 (and 5): positive {5: 1}, negatives {1: -1, 2: -1, 3: 0}: x = 1 twice, 0 once:
    #   2 AT_1 + AT_0 over 3 triplets.
    # T = 4 + 4 + 4 + 3 + 3 = 18 triplets. "triplet": each row's sum times n / T = 5 / 18.
    # "anchor": each row's mean times n / (anchors with triplets) = 5 / 5.
    sums = np.array([2 * AT_1 + 2 * AT_0] * 2 + [4 * AT_MINUS_1] + [2 * AT_1 + AT_0] * 2)
    counts = np.array([4, 4, 4, 3, 3])
    codes, labels = _codes(1, 1, 0, -1, -1), [0, 0, 0, 1, 1]
    for average, expected in (("triplet", sums * 5 / 18), ("anchor", sums / counts)):
        model = DTSH(bits=8, input_shape=(8, 8, 1), margin=1.0, triplet_average=average)
        np.testing.assert_allclose(_terms(model, codes, labels)["triplet_loss"], expected, rtol=1e-12)


def test_multi_label_triplets_follow_the_shared_label_relation(float64):
    # y1 = {a}, y2 = {a, b}, y3 = {b}; codes a, a, -a; margin 1. Item 2 shares a label with both others,
    # 1 and 3 share none. Triplets: (1, 2, 3): Theta 1 - (-1) - 1 = 1; (3, 2, 1): Theta_32 = -1,
    # Theta_31 = -1: x = -1 - (-1) - 1 = -1. Item 2 has no negative. T = 2, n / T = 3 / 2.
    model = DTSH(bits=8, input_shape=(8, 8, 1), margin=1.0)
    terms = _terms(model, _codes(1, 1, -1), [[1, 0], [1, 1], [0, 1]])
    np.testing.assert_allclose(terms["triplet_loss"], [1.5 * AT_1, 0.0, 1.5 * AT_MINUS_1], rtol=1e-12)


def test_bad_arguments_fail_in_one_line():
    with pytest.raises(ValueError, match=r"triplet_average must be one of .* Received: triplet_average='row'"):
        DTSH(bits=8, input_shape=(8, 8, 1), triplet_average="row")
    with pytest.raises(ValueError, match=r"theta_scale must be positive. Received: theta_scale=0"):
        DTSH(bits=8, input_shape=(8, 8, 1), theta_scale=0)


@pytest.mark.slow
def test_training_learns_codes_that_retrieve_by_label(digits, tmp_path):
    keras.utils.set_random_seed(0)
    untrained = DTSH(bits=16, input_shape=(8, 8, 1))
    (xq, yq), (xd, yd) = digits.subset("query"), digits.subset("database")
    before = metrics.mean_average_precision(untrained.encode(xq), untrained.encode(xd), yq, yd)
    result = training.train("dtsh", data=digits, bits=16, seed=0, epochs=8, batch_size=50,
                            output_dir=str(tmp_path), verbose=0)
    after = result.scores["image"]["map"]
    # 10 balanced classes: random codes score about 0.1; training must at least double the
    # untrained encoder's mAP@all on held-out queries.
    assert after > 2 * before and after > 0.4, (before, after)
    encoder = training.load_model(str(tmp_path))
    assert abs(method_checks.map_by_hand(encoder.encode(xq), encoder.encode(xd), yq, yd) - after) < 1e-9
