"""IDHN on scikit-learn digits: its loss by hand (soft and hard pairs), its code memory, that it learns.
The shared checks (run directory, config, saving, export, N replicas = one device,
an ImageNet trunk) run for it from the registry (tests/test_methods.py)."""

import keras
import numpy as np
import pytest

from method_checks import float64  # noqa: F401  (a fixture)
from method_checks import weighted as _weighted
from tfhash import metrics, training
from tfhash.data import load_protocol
from tfhash.models.idhn import IDHN

# log(1 + e^-1): the likelihood log(1 + e^T) - s T at T = 1, s = 1 and at T = -1, s = 0.
LOG1P_EXP_MINUS_1 = 0.31326168751822286
# Head outputs z = +-1 (K = 8): softsign gives u = +-1/2.
Z = np.stack([np.ones(8), np.ones(8), -np.ones(8)])


def _terms(model, labels, codes=Z, batch=None):
    codes = keras.ops.convert_to_tensor(codes)
    labels = keras.ops.convert_to_tensor(np.asarray(labels, dtype="float64"))
    return model.loss_terms(codes, labels, codes, labels, batch or {})


def test_three_items_soft_and_hard_pairs_by_hand(float64):
    # z = 1, 1, -1 per bit: u = 1/2, 1/2, -1/2, <u_i, u_j> = +-8/4 = +-2 (+2 between rows 1, 2 and on the
    # diagonal, -2 against row 3). Labels y1 = [1,0,0,0], y2 = [1,1,1,1], y3 = [0,1,0,0]: label cosines
    # s12 = 1 / (1 * 2) = 1/2 and s23 = 1/2 (soft), s13 = 0 and each row with itself 1 (hard).
    # Hard pairs, beta = 4: Theta = 4 * (+-2) / 8 = +-1: itself (s 1, T 1) and 1-3 (s 0, T -1) both cost
    # log(1 + e^-1) = L. Soft pairs: K ((<u,u'> + K) / 2K - s)^2 = 8 (10/16 - 1/2)^2 = 1/8 for 1-2 and
    # 8 (6/16 - 1/2)^2 = 1/8 for 2-3. Means over the 3 columns:
    #   row 1: hard {1, 3} 2L/3, soft {2} (1/8)/3;  row 2: hard {2} L/3, soft {1, 3} (2/8)/3;
    #   row 3: hard {1, 3} 2L/3, soft {2} (1/8)/3.
    # Quantization, the per-bit mean of ||u| - 1|: 1/2 each; alpha = gamma = 0.1.
    model = IDHN(bits=8, input_shape=(8, 8, 1), beta=4.0)
    terms = _terms(model, [[1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0]])
    L = LOG1P_EXP_MINUS_1
    np.testing.assert_allclose(np.asarray(terms["likelihood_loss"]), [2 * L / 3, L / 3, 2 * L / 3], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(terms["soft_loss"]), [1 / 24, 2 / 24, 1 / 24], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(terms["quantization_loss"]), [0.5] * 3, rtol=1e-12)
    expected = np.array([2 * L / 3, L / 3, 2 * L / 3]) + 0.1 * np.array([1, 2, 1]) / 24 + 0.05
    np.testing.assert_allclose(np.asarray(_weighted(model, terms)), expected, rtol=1e-12)


def test_class_ids_make_every_pair_hard(float64):
    # Labels 0, 0, 1: s in {0, 1}, no soft pair. Rows 1, 2 (T = +1, similar) and each with row 3
    # (T = -1, dissimilar) all cost L: every row's likelihood is L, its soft loss 0.
    model = IDHN(bits=8, input_shape=(8, 8, 1), beta=4.0)
    terms = _terms(model, [0, 0, 1])
    np.testing.assert_allclose(np.asarray(terms["likelihood_loss"]), [LOG1P_EXP_MINUS_1] * 3, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(terms["soft_loss"]), [0, 0, 0])


def test_the_code_memory_pairs_each_row_with_every_training_rows_latest_code(float64):
    # Four training rows; the batch writes z = 1 (label 0) to row 0 and z = -1 (label 1) to row 2. Rows 1
    # and 3 are unwritten: z = 0 (u = 0, T = 0) and label 0, costing log 2 - s * 0 = log 2 whatever s.
    # Each batch row: itself L, the other written row L, two unwritten rows log 2: (2L + 2 log 2) / 4.
    model = IDHN(bits=8, input_shape=(8, 8, 1), beta=4.0, memory=True, num_train=4, label_shape=())
    batch = {"index": keras.ops.convert_to_tensor(np.array([0.0, 2.0]))}
    terms = _terms(model, [0, 1], codes=Z[1:], batch=batch)
    expected = (2 * LOG1P_EXP_MINUS_1 + 2 * np.log(2)) / 4
    np.testing.assert_allclose(np.asarray(terms["likelihood_loss"]), [expected] * 2, rtol=1e-12)
    memory = np.asarray(model.code_memory.codes.value)
    np.testing.assert_array_equal(memory[[0, 2]], Z[1:])
    assert not memory[[1, 3]].any()


@pytest.mark.parametrize("settings, message", [
    ({"beta": 0.0}, r"beta must be positive. Received: beta=0.0"),
    ({"gamma": -1.0}, r"gamma must be non-negative. Received: gamma=-1.0"),
])
def test_bad_arguments_fail_in_one_line(settings, message):
    with pytest.raises(ValueError, match=message):
        IDHN(bits=8, input_shape=(8, 8, 1), **settings)


@pytest.mark.slow
def test_training_learns_codes_that_retrieve_by_label(tmp_path):
    digits = load_protocol("digits")
    keras.utils.set_random_seed(0)
    untrained = IDHN(bits=16, input_shape=(8, 8, 1))
    (xq, yq), (xd, yd) = digits.subset("query"), digits.subset("database")
    before = metrics.mean_average_precision(untrained.encode(xq), untrained.encode(xd), yq, yd)
    result = training.train("idhn", data=digits, bits=16, seed=0, epochs=4, batch_size=50,
                            output_dir=str(tmp_path), verbose=0)
    after = result.scores["image"]["map"]
    # 10 balanced classes: random codes score about 0.1; 4 epochs take the untrained encoder's 0.18 to
    # 0.71 (seed 0): training must at least double it.
    assert after > 2 * before and after > 0.4, (before, after)
