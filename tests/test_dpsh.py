"""DPSH on scikit-learn digits: its loss by hand, its code memory, that it learns.
The shared checks (run directory, config, saving, export, N replicas = one device,
an ImageNet trunk) run for it from the registry (tests/test_methods.py)."""

import keras
import numpy as np
import pytest

import method_checks
from method_checks import float64  # noqa: F401  (a fixture)
from method_checks import weighted as _weighted
from tfhash import metrics, training
from tfhash.data import load_protocol
from tfhash.models import DPSH

# log(1 + e^-1): the pair loss log(1 + e^T) - s T at T = 1, s = 1 and at T = -1, s = 0.
LOG1P_EXP_MINUS_1 = 0.31326168751822286


@pytest.fixture(scope="module")
def digits():
    return load_protocol("digits")


def test_three_items_loss_by_hand(float64):
    # K = 8, u1 = u2 = 0.5 * ones, u3 = -u1; labels 0, 0, 1. Theta = u_i.u_j / 2 is 8 * 0.25 / 2 = 1
    # between u1 and u2 (and each with itself), -1 against u3. Every pair is then either similar at
    # Theta = 1 or dissimilar at Theta = -1, and both cost log(1 + e^-1): each row's mean is that.
    # Quantization: |sign(u) - u|^2 / K = 8 * 0.5^2 / 8 = 0.25 per row, weighed by eta = 0.1.
    model = DPSH(bits=8, input_shape=(8, 8, 1))
    half = np.full(8, 0.5)
    codes = keras.ops.convert_to_tensor(np.stack([half, half, -half]))
    labels = keras.ops.convert_to_tensor(np.array([0.0, 0.0, 1.0]))
    terms = model.loss_terms(codes, labels, codes, labels, {})
    np.testing.assert_allclose(np.asarray(terms["likelihood_loss"]), [LOG1P_EXP_MINUS_1] * 3, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(terms["quantization_loss"]), [0.25] * 3, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(_weighted(model, terms)), [LOG1P_EXP_MINUS_1 + 0.025] * 3, rtol=1e-12)


def test_the_code_memory_pairs_each_row_with_every_training_rows_latest_code(float64):
    # Four training rows; the batch writes u1 (label 0) to row 0 and u3 = -u1 (label 1) to row 2.
    # Rows 1 and 3 are unwritten: code 0, so Theta = 0 and their pair costs log 2 whatever s.
    # Each batch row: one pair at Theta = +-1 costing log(1 + e^-1) (itself, and the other at -1
    # dissimilar), two unwritten rows at log 2: mean (2 log(1 + e^-1) + 2 log 2) / 4.
    model = DPSH(bits=8, input_shape=(8, 8, 1), memory=True, num_train=4, label_shape=())
    half = np.full(8, 0.5)
    codes = keras.ops.convert_to_tensor(np.stack([half, -half]))
    labels = keras.ops.convert_to_tensor(np.array([0.0, 1.0]))
    batch = {"index": keras.ops.convert_to_tensor(np.array([0.0, 2.0]))}
    terms = model.loss_terms(codes, labels, codes, labels, batch)
    expected = (2 * LOG1P_EXP_MINUS_1 + 2 * np.log(2)) / 4
    np.testing.assert_allclose(np.asarray(terms["likelihood_loss"]), [expected] * 2, rtol=1e-12)
    memory = np.asarray(model.code_memory.codes.value)
    np.testing.assert_array_equal(memory[[0, 2]], np.stack([half, -half]))
    assert not memory[[1, 3]].any()


@pytest.mark.slow
@pytest.mark.parametrize("memory", [False, True])
def test_training_learns_codes_that_retrieve_by_label(digits, memory, tmp_path):
    keras.utils.set_random_seed(0)
    untrained = DPSH(bits=16, input_shape=(8, 8, 1))
    untrained.build((None, 8, 8, 1))
    (xq, yq), (xd, yd) = digits.subset("query"), digits.subset("database")
    before = metrics.mean_average_precision(untrained.encode(xq), untrained.encode(xd), yq, yd)
    result = training.train("dpsh", data=digits, bits=16, seed=0, epochs=8, batch_size=50, memory=memory,
                            output_dir=str(tmp_path), verbose=0)
    after = result.scores["image"]["map"]
    # 10 balanced classes: random codes score about 0.1; training must at least double the
    # untrained encoder's mAP@all on held-out queries.
    assert after > 2 * before and after > 0.4, (before, after)
    # The score recorded is the saved encoder's, recomputed apart from tfhash.metrics.
    encoder = training.load_model(str(tmp_path))
    assert abs(method_checks.map_by_hand(encoder.encode(xq), encoder.encode(xd), yq, yd) - after) < 1e-9
