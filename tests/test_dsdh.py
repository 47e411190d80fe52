"""DSDH on scikit-learn digits: its loss by hand, its discrete W- and B-steps, that it learns.
The shared checks (run directory, config, saving, export, N replicas = one device,
an ImageNet trunk) run for it from the registry (tests/test_methods.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import method_checks
from method_checks import float64  # noqa: F401  (a fixture)
from method_checks import weighted as _weighted
from tfhash import metrics, training
from tfhash.models.dsdh import DSDH, discrete_step, label_matrix

# log(1 + e^-1): the pair loss log(1 + e^T) - s T at T = 1, s = 1 and at T = -1, s = 0.
LOG1P_EXP_MINUS_1 = 0.31326168751822286


def test_three_items_loss_by_hand(float64):
    # K = 8, u1 = u2 = 0.5 * ones, u3 = -u1; labels 0, 0, 1; rows 0, 1, 2 of 3 training rows.
    # Likelihood (DPSH's): Theta = u_i.u_j / 2 = +-1, every pair costs log(1 + e^-1).
    # Before any B-step (B = 0, W = 0): b = sign(u), |b - u|^2 / K = 0.25; |y - W^T b|^2 = |y|^2 = 1.
    model = DSDH(bits=8, input_shape=(8, 8, 1), num_train=3, num_classes=2)
    half = np.full(8, 0.5)
    codes = keras.ops.convert_to_tensor(np.stack([half, half, -half]))
    labels = keras.ops.convert_to_tensor(np.array([0, 0, 1]))
    batch = {"index": keras.ops.convert_to_tensor(np.array([0.0, 1.0, 2.0]))}
    terms = model.loss_terms(codes, labels, codes, labels, batch)
    np.testing.assert_allclose(np.asarray(terms["likelihood_loss"]), [LOG1P_EXP_MINUS_1] * 3, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(terms["quantization_loss"]), [0.25] * 3, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(terms["classification_loss"]), [1.0] * 3, rtol=1e-12)
    # Row 0 solved to b = -1s (against its u), W's class-0 column -1/8 per bit, class 1's 0:
    # row 0: W^T b = (1, 0) = y, no classification loss; |b - u|^2 / K = 1.5^2 = 2.25.
    # Rows 1 and 2 unsolved, b = sign(u): row 1 W^T b = (-1, 0) against y = (1, 0): 4;
    # row 2 b = -1s: W^T b = (1, 0) against y = (0, 1): 1 + 1 = 2. Their quantization stays 0.25.
    model.discrete.binary.assign(np.stack([-np.ones(8), np.zeros(8), np.zeros(8)]))
    model.discrete.classifier.assign(np.stack([np.full(8, -1 / 8), np.zeros(8)], axis=1))
    terms = model.loss_terms(codes, labels, codes, labels, batch)
    np.testing.assert_allclose(np.asarray(terms["quantization_loss"]), [2.25, 0.25, 0.25], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(terms["classification_loss"]), [0.0, 4.0, 2.0], atol=1e-12)
    # eta = 0.1, mu = 1.
    np.testing.assert_allclose(np.asarray(_weighted(model, terms)),
                               LOG1P_EXP_MINUS_1 + np.array([0.225, 4.025, 2.025]), rtol=1e-12)


def _objective(binary, weights, codes, labels, mu=1.0, nu=0.1, eta=0.1):
    """The B- and W-steps' objective: mu |Y - B W|^2 + nu |W|^2 + eta |B - U|^2."""
    return (mu * np.sum((labels - binary @ weights) ** 2) + nu * np.sum(weights ** 2)
            + eta * np.sum((binary - codes) ** 2))


def test_the_discrete_step_solves_w_in_closed_form_and_b_bit_by_bit():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(12, 4))
    labels = label_matrix(rng.integers(0, 3, size=12), 3)
    start = np.where(codes >= 0, 1.0, -1.0)
    # mu = 2, nu = 0.2, eta = 0.4: the steps see nu/mu = 0.1 and eta/mu = 0.2.
    binary, weights = discrete_step(codes, labels, start, mu=2.0, nu=0.2, eta=0.4)
    # W: the ridge regression of Y on the starting B, (B^T B + nu/mu I) W = B^T Y.
    np.testing.assert_allclose((start.T @ start + 0.1 * np.eye(4)) @ weights, start.T @ labels, atol=1e-12)
    # B: in {-1, +1}; the objective did not rise from the start (each bit is that bit's exact minimizer);
    # the last bit solved is optimal given the others: no single flip of it lowers the objective.
    assert set(np.unique(binary)) == {-1.0, 1.0}
    weights_of = dict(mu=2.0, nu=0.2, eta=0.4)
    after = _objective(binary, weights, codes, labels, **weights_of)
    assert after <= _objective(start, weights, codes, labels, **weights_of) + 1e-12
    for i in range(12):
        flipped = binary.copy()
        flipped[i, -1] *= -1
        assert _objective(flipped, weights, codes, labels, **weights_of) >= after - 1e-12
    # Labels move codes: rows whose u barely leans one way take their class's code. Two classes, K = 2,
    # u = +-0.01 on row 0 but its label is that of the rows at -1: with eta/mu = 0.1, B follows the label.
    codes = np.array([[0.01, 0.01], [-1.0, -1.0], [-1.0, -1.0], [1.0, 1.0], [1.0, 1.0]])
    labels = label_matrix(np.array([0, 0, 0, 1, 1]), 2)
    binary, _ = discrete_step(codes, labels, np.where(codes >= 0, 1.0, -1.0), mu=1.0, nu=0.1, eta=0.1)
    np.testing.assert_array_equal(binary[0], [-1.0, -1.0])


def test_the_epoch_end_update_writes_b_and_w_from_the_memories(float64):
    # The memory holds U; the update starts from sign(U) and takes discrete_step's B and W.
    model = DSDH(bits=8, input_shape=(8, 8, 1), num_train=6, num_classes=3, mu=2.0, nu=0.5, eta=0.2)
    rng = np.random.default_rng(1)
    codes, labels = rng.normal(size=(6, 8)), np.array([0, 1, 2, 0, 1, 2])
    model.code_memory.codes.assign(codes)
    model.update_discrete_codes(labels)
    binary, weights = discrete_step(codes, label_matrix(labels, 3), np.where(codes >= 0, 1.0, -1.0), 2.0, 0.5, 0.2)
    np.testing.assert_array_equal(model.discrete.binary.numpy(), binary)
    np.testing.assert_allclose(model.discrete.classifier.numpy(), weights, rtol=1e-12)
    # A second update starts from the B it wrote.
    model.update_discrete_codes(labels)
    again, _ = discrete_step(codes, label_matrix(labels, 3), binary, 2.0, 0.5, 0.2)
    np.testing.assert_array_equal(model.discrete.binary.numpy(), again)


def test_multi_hot_labels_are_the_classifiers_targets(float64):
    # Y rows are the multi-hot rows themselves: with W = 0 the classification loss is |y|^2, the positives.
    model = DSDH(bits=8, input_shape=(8, 8, 1), num_train=2, num_classes=3, label_shape=(3,))
    codes = keras.ops.convert_to_tensor(np.stack([np.full(8, 0.5), np.full(8, -0.5)]))
    labels = keras.ops.convert_to_tensor(np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    batch = {"index": keras.ops.convert_to_tensor(np.array([0.0, 1.0]))}
    terms = model.loss_terms(codes, labels, codes, labels, batch)
    np.testing.assert_allclose(np.asarray(terms["classification_loss"]), [2.0, 1.0], rtol=1e-12)
    # They share no label: Theta = -1 between them, dissimilar; each with itself Theta = 1, similar.
    np.testing.assert_allclose(np.asarray(terms["likelihood_loss"]), [LOG1P_EXP_MINUS_1] * 2, rtol=1e-12)


def test_bad_arguments_fail_in_one_line():
    for kwargs, pattern in [({"mu": 0.0}, r"mu must be positive .*Received: mu=0.0"),
                            ({"dcc_iterations": 0}, r"dcc_iterations must be a positive integer. Received: "),
                            ({"num_classes": 0}, r"num_classes must be a positive integer. Received: num_classes=0")]:
        with pytest.raises(ValueError, match=pattern) as error:
            DSDH(bits=8, input_shape=(8, 8, 1), **kwargs)
        assert "\n" not in str(error.value)


@pytest.mark.slow
def test_pairs_against_the_memory_take_one_devices_steps_on_two_replicas(digits_data, mirrored, float64):
    # The published configuration is checked by tests/test_methods.py; here memory=True, whose
    # columns and B rows are read from the memories on each replica. Two epochs: the second
    # trains against the B and W the first epoch's end wrote.
    method_checks.run_strategy_invariance("dsdh", method_checks.few_steps(digits_data),
                                          tf.distribute.OneDeviceStrategy("/cpu:0"), mirrored,
                                          {"epochs": 2, "batch_size": 64, "memory": True})


@pytest.mark.slow
@pytest.mark.parametrize("memory", [False, True])
def test_training_learns_codes_that_retrieve_by_label(digits_data, memory, tmp_path):
    digits = digits_data
    keras.utils.set_random_seed(0)
    untrained = DSDH(bits=16, input_shape=(8, 8, 1), num_classes=10)
    (xq, yq), (xd, yd) = digits.subset("query"), digits.subset("database")
    before = metrics.mean_average_precision(untrained.encode(xq), untrained.encode(xd), yq, yd)
    result = training.train("dsdh", data=digits, bits=16, seed=0, epochs=8, batch_size=50, memory=memory,
                            output_dir=str(tmp_path), verbose=0)
    after = result.scores["image"]["map"]
    # 10 balanced classes: random codes score about 0.1; training must at least double the
    # untrained encoder's mAP@all on held-out queries.
    assert after > 2 * before and after > 0.4, (before, after)
    # The epoch ends solved B: every training row has a code in {-1, +1}.
    assert set(np.unique(result.model.discrete.binary.numpy())) == {-1.0, 1.0}
