"""CSQ on scikit-learn digits: its hash centers, its loss by hand, multi-label centers, that it learns.
The shared checks (run directory, config, saving, export, N replicas = one device,
an ImageNet trunk) run for it from the registry (tests/test_methods.py)."""

import keras
import numpy as np
import pytest
from scipy.linalg import hadamard

import method_checks
from method_checks import float64  # noqa: F401  (a fixture)
from tfhash import metrics, training
from tfhash.data import load_protocol
from tfhash.models.csq import CSQ, hash_centers


@pytest.fixture(scope="module")
def digits():
    return load_protocol("digits")


def _distances(centers):
    k = centers.shape[1]
    d = (k - centers @ centers.T) / 2
    return d[np.triu_indices(len(centers), 1)]


def test_hadamard_centers_and_their_negations_when_k_is_a_power_of_two():
    # 10 classes in 16 bits: the 16 rows of H_16 suffice; H H^T = K I, so every pair is K/2 = 8 apart.
    centers = hash_centers(10, 16)
    np.testing.assert_array_equal(centers, hadamard(16)[:10])
    assert set(_distances(centers)) == {8.0}
    # 20 classes in 8 bits: H_8, then -H_8 (distance 8 to its own row, 4 to the others), then 4 drawn.
    many = hash_centers(20, 8)
    np.testing.assert_array_equal(many[:16], np.concatenate([hadamard(8), -hadamard(8)]))
    assert set(np.unique(many)) == {-1.0, 1.0}


def test_bernoulli_centers_are_the_seeds_and_well_separated():
    # K = 24 is no power of 2: every center drawn. Same seed, same centers; another seed, others.
    # The draw kept has min distance > K/4 = 6 and mean >= K/2 = 12 (DeepHash-pytorch's test).
    centers = hash_centers(10, 24, seed=3)
    np.testing.assert_array_equal(centers, hash_centers(10, 24, seed=3))
    assert not np.array_equal(centers, hash_centers(10, 24, seed=4))
    assert _distances(centers).min() > 6 and _distances(centers).mean() >= 12


def test_three_items_loss_by_hand(float64):
    # K = 8, 2 classes: centers H_8 rows 0 (all +1) and 1 (+1, -1, +1, -1, ...). Every code is
    # u = 0.5 * ones, so h = (u + 1) / 2 = 0.75 on every bit.
    # Item of class 0: target 1 on every bit: BCE -log 0.75 per bit, mean -log 0.75.
    # Item of class 1: target 1 on half the bits (-log 0.75), 0 on the other half (-log 0.25).
    # Quantization (log cosh): log cosh(|0.5| - 1) = log cosh 0.5 per bit, its mean the same.
    model = CSQ(bits=8, input_shape=(8, 8, 1), num_classes=2)
    codes = keras.ops.convert_to_tensor(np.full((3, 8), 0.5))
    labels = keras.ops.convert_to_tensor(np.array([0.0, 1.0, 0.0]))
    terms = model.loss_terms(codes, labels, codes, labels, {})
    class_0, class_1 = -np.log(0.75), -(np.log(0.75) + np.log(0.25)) / 2
    np.testing.assert_allclose(np.asarray(terms["center_loss"]), [class_0, class_1, class_0], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(terms["quantization_loss"]), [np.log(np.cosh(0.5))] * 3, rtol=1e-12)
    squared = CSQ(bits=8, input_shape=(8, 8, 1), num_classes=2, quantization="squared")
    # (|0.5| - 1)^2 = 0.25 per bit.
    np.testing.assert_allclose(np.asarray(squared.loss_terms(codes, labels, codes, labels, {})["quantization_loss"]),
                               [0.25] * 3, rtol=1e-12)


def test_multi_label_items_take_the_majority_of_their_labels_centers(float64):
    # K = 8, 3 classes: c0 = all +1, c1 = (+, -, +, -, ...), c2 = (+, +, -, -, +, +, -, -).
    # {0, 1}: votes (2, 0, 2, 0, ...): +1 on even bits, ties on odd bits take the model's tie bits.
    # {0, 1, 2}: votes (3, 1, 1, -1, 3, 1, 1, -1): no tie.
    model = CSQ(bits=8, input_shape=(8, 8, 1), num_classes=3)
    labels = keras.ops.convert_to_tensor(np.array([[1.0, 1, 0], [1, 1, 1]]))
    centers = np.asarray(model.item_centers(labels, "float64"))
    ties = np.asarray(model.tie_bits.value)
    np.testing.assert_array_equal(centers[0], np.where(np.arange(8) % 2 == 0, 1.0, ties))
    np.testing.assert_array_equal(centers[1], [1, 1, 1, -1, 1, 1, 1, -1])


def test_the_centers_are_saved_with_the_model(tmp_path):
    model = CSQ(bits=16, input_shape=(8, 8, 1), num_classes=10, center_seed=5)
    assert not model.centers.trainable and not model.tie_bits.trainable
    # Whatever the centers hold is what a reload has (not recomputed from the seed).
    changed = -np.asarray(model.centers.value)
    model.centers.assign(changed)
    model.save(tmp_path / "csq.keras")
    reloaded = keras.saving.load_model(tmp_path / "csq.keras")
    np.testing.assert_array_equal(reloaded.centers.value, changed)
    np.testing.assert_array_equal(reloaded.tie_bits.value, model.tie_bits.value)


def test_bad_arguments_fail_in_one_line():
    with pytest.raises(ValueError, match=r"quantization must be one of .* Received: quantization='l1'"):
        CSQ(bits=8, input_shape=(8, 8, 1), quantization="l1")
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 1. Received: num_classes=0"):
        CSQ(bits=8, input_shape=(8, 8, 1), num_classes=0)


@pytest.mark.slow
def test_training_learns_codes_that_retrieve_by_label(digits, tmp_path):
    keras.utils.set_random_seed(0)
    untrained = CSQ(bits=16, input_shape=(8, 8, 1), num_classes=10)
    (xq, yq), (xd, yd) = digits.subset("query"), digits.subset("database")
    before = metrics.mean_average_precision(untrained.encode(xq), untrained.encode(xd), yq, yd)
    result = training.train("csq", data=digits, bits=16, seed=0, epochs=8, batch_size=50,
                            output_dir=str(tmp_path), verbose=0)
    after = result.scores["image"]["map"]
    # 10 balanced classes: random codes score about 0.1; training must at least double the
    # untrained encoder's mAP@all on held-out queries.
    assert after > 2 * before and after > 0.4, (before, after)
    encoder = training.load_model(str(tmp_path))
    assert abs(method_checks.map_by_hand(encoder.encode(xq), encoder.encode(xd), yq, yd) - after) < 1e-9
