"""DSH on scikit-learn digits: its loss by hand, its margin and memory, that it learns.
The shared checks (run directory, config, saving, export, N replicas = one device,
an ImageNet trunk) run for it from the registry (tests/test_methods.py)."""

import keras
import numpy as np
import pytest

from method_checks import float64  # noqa: F401  (a fixture)
from method_checks import weighted as _weighted
from tfhash import metrics, training
from tfhash.data import load_protocol
from tfhash.models.dsh import DSH

ONES = np.ones(8)
# K = 8: u1 = (1, ..., 1), u2 = u1 / 2, u3 = (-1/2 four times, then 1/2 four times).
CODES = np.stack([ONES, ONES / 2, np.repeat([-0.5, 0.5], 4)])


def _terms(model, labels, codes=CODES, batch=None):
    codes = keras.ops.convert_to_tensor(codes)
    labels = keras.ops.convert_to_tensor(np.asarray(labels, dtype="float64"))
    return model.loss_terms(codes, labels, codes, labels, batch or {})


def test_three_items_loss_by_hand(float64):
    # Labels 0, 0, 1; margin m = 2K = 16. Squared distances: d12 = 8 * 0.5^2 = 2,
    # d13 = 4 * 1.5^2 + 4 * 0.5^2 = 10, d23 = 4 * 1^2 + 4 * 0 = 4, each with itself 0.
    # Pair losses: similar d / 2, dissimilar max(0, m - d) / 2:
    #   row 1: itself 0, u2 2/2 = 1, u3 (16 - 10) / 2 = 3    -> mean 4/3
    #   row 2: u1 1, itself 0, u3 (16 - 4) / 2 = 6            -> mean 7/3
    #   row 3: u1 3, u2 6, itself (similar) 0                 -> mean 3
    # Regularizer sum_k ||u_k| - 1|: u1 0, u2 8 * 0.5 = 4, u3 8 * 0.5 = 4, weighed by alpha = 0.01.
    model = DSH(bits=8, input_shape=(8, 8, 1))
    terms = _terms(model, [0, 0, 1])
    np.testing.assert_allclose(np.asarray(terms["contrastive_loss"]), [4 / 3, 7 / 3, 3], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(terms["regularizer"]), [0, 4, 4], atol=1e-12)
    np.testing.assert_allclose(np.asarray(_weighted(model, terms)), [4 / 3, 7 / 3 + 0.04, 3 + 0.04], rtol=1e-12)


def test_a_set_margin_and_multi_hot_labels(float64):
    # Multi-hot rows [1, 0], [1, 1], [0, 1]: 1 ~ 2 and 2 ~ 3 share a label, 1 and 3 do not.
    # margin 8: row 1: u2 1, u3 max(0, 8 - 10) / 2 = 0 -> 1/3; row 2: u1 1, u3 similar 4 / 2 = 2 -> 1;
    # row 3: u1 0 (beyond the margin), u2 similar 2 -> 2/3.
    model = DSH(bits=8, input_shape=(8, 8, 1), margin=8.0)
    terms = _terms(model, [[1, 0], [1, 1], [0, 1]])
    np.testing.assert_allclose(np.asarray(terms["contrastive_loss"]), [1 / 3, 1, 2 / 3], rtol=1e-12)


def test_the_code_memory_pairs_each_row_with_every_training_rows_latest_code(float64):
    # Four training rows; the batch writes u1 (label 0) to row 0 and u3 (label 1) to row 2. Rows 1
    # and 3 are unwritten: code 0 and label 0, as in DeepHash-pytorch, so class 0 counts them similar.
    # u1: itself 0, row 1 similar |u1|^2 / 2 = 4, u3 (16 - 10) / 2 = 3, row 3 4      -> mean 11/4
    # u3: u1 3, row 1 dissimilar (16 - |u3|^2) / 2 = 7, itself 0, row 3 7             -> mean 17/4
    model = DSH(bits=8, input_shape=(8, 8, 1), memory=True, num_train=4, label_shape=())
    batch = {"index": keras.ops.convert_to_tensor(np.array([0.0, 2.0]))}
    terms = _terms(model, [0, 1], codes=CODES[[0, 2]], batch=batch)
    np.testing.assert_allclose(np.asarray(terms["contrastive_loss"]), [11 / 4, 17 / 4], rtol=1e-12)


@pytest.mark.parametrize("settings, message", [
    ({"margin": 0.0}, r"margin must be positive, or None for 2 \* bits. Received: margin=0.0"),
    ({"alpha": -1.0}, r"alpha must be non-negative. Received: alpha=-1.0"),
])
def test_bad_arguments_fail_in_one_line(settings, message):
    with pytest.raises(ValueError, match=message):
        DSH(bits=8, input_shape=(8, 8, 1), **settings)


@pytest.mark.slow
def test_training_learns_codes_that_retrieve_by_label(tmp_path):
    digits = load_protocol("digits")
    keras.utils.set_random_seed(0)
    untrained = DSH(bits=16, input_shape=(8, 8, 1))
    (xq, yq), (xd, yd) = digits.subset("query"), digits.subset("database")
    before = metrics.mean_average_precision(untrained.encode(xq), untrained.encode(xd), yq, yd)
    result = training.train("dsh", data=digits, bits=16, seed=0, epochs=4, batch_size=50,
                            output_dir=str(tmp_path), verbose=0)
    after = result.scores["image"]["map"]
    # 10 balanced classes: random codes score about 0.1; 4 epochs take the untrained encoder's 0.18 to
    # 0.62 (seed 0): training must at least double it.
    assert after > 2 * before and after > 0.4, (before, after)
