"""OrthoHash on scikit-learn digits: its loss by hand, its class codes and batch norm, that it learns.
The shared checks (run directory, config, saving, export, N replicas = one device,
an ImageNet trunk) run for it from the registry (tests/test_methods.py)."""

import keras
import numpy as np
import pytest

from method_checks import float64  # noqa: F401  (a fixture)
from tfhash import metrics, training
from tfhash.data import load_protocol
from tfhash.models.orthohash import OrthoHash, class_codes


def softplus(x):
    return np.log1p(np.exp(x))


@pytest.fixture(scope="module")
def digits():
    return load_protocol("digits")


def _model(scale=8.0, **kwargs):
    # K = 4, two classes with the orthogonal codes c0 = (1, 1, 1, 1) and c1 = (1, 1, -1, -1), set by hand; s = 8.
    model = OrthoHash(bits=8, input_shape=(8, 8, 1), num_classes=2, scale=scale, **kwargs)
    model.class_codes.assign(np.array([[1.0] * 4 + [0.0] * 4, [1, 1, -1, -1] + [0.0] * 4]))
    return model


# Codes on the first 4 bits (the rest 0, as the class codes' are: the cosines are the 4-bit ones).
# v1 = 2 c0: cos 1 to c0, 0 to c1.  v2 = c1: cos 0 to c0, 1 to c1.
# v3 = (3, 1, 1, 1): |v3| = sqrt(12), cos to c0 = 6 / (2 sqrt 12) = sqrt(3) / 2, to c1 = 2 / (2 sqrt 12) = 1 / (2 sqrt 3).
CODES = np.array([[2.0, 2, 2, 2, 0, 0, 0, 0], [1, 1, -1, -1, 0, 0, 0, 0], [3, 1, 1, 1, 0, 0, 0, 0]])


def test_three_items_loss_by_hand(float64):
    # s = 8, m = 0.2 off the true class's cosine. Labels 0, 0, 1.
    # v1, class 0: logits (8 (1 - 0.2), 0) = (6.4, 0): CE = log(1 + e^(0 - 6.4)) = softplus(-6.4).
    # v2, class 0: logits (8 (0 - 0.2), 8) = (-1.6, 8): CE = softplus(8 + 1.6) = softplus(9.6).
    # v3, class 1: logits (4 sqrt 3, 8 (1 / (2 sqrt 3) - 0.2)): CE = softplus(logit0 - logit1).
    # Quantization 1 - cos(v, sign v): v1 and v2 are their signs scaled (0); sign(v3) = c0, so 1 - sqrt(3) / 2.
    model = _model(quantization_weight=0.5)
    codes = keras.ops.convert_to_tensor(CODES)
    labels = keras.ops.convert_to_tensor(np.array([0, 0, 1]))
    terms = model.loss_terms(codes, labels, codes, labels, {})
    v3 = softplus(4 * np.sqrt(3) - 8 * (1 / (2 * np.sqrt(3)) - 0.2))
    np.testing.assert_allclose(np.asarray(terms["classification_loss"]), [softplus(-6.4), softplus(9.6), v3],
                               rtol=1e-12)
    np.testing.assert_allclose(np.asarray(terms["quantization_loss"]), [0, 0, 1 - np.sqrt(3) / 2], atol=1e-15)
    # The one loss by default: the quantization term weighs 0.
    assert OrthoHash.term_weights["quantization_loss"] == "quantization_weight"
    assert OrthoHash(bits=8, input_shape=(8, 8, 1)).quantization_weight == 0


def test_the_default_scale_is_the_papers_square_root_of_the_code_length(float64):
    # v1 of the test above, class 0, at the default s = sqrt(K): K = 16 gives s = 4, logits (4 (1 - 0.2), 0).
    model = _model(scale=None)
    assert model.get_config()["scale"] is None and model.logit_scale == np.sqrt(8)
    model = OrthoHash(bits=16, input_shape=(8, 8, 1), num_classes=2)
    model.class_codes.assign(np.array([[1.0] * 4 + [0.0] * 12, [1, 1, -1, -1] + [0.0] * 12]))
    codes = keras.ops.convert_to_tensor(np.pad(CODES[:1], ((0, 0), (0, 8))))
    labels = keras.ops.convert_to_tensor(np.array([0]))
    loss = model.loss_terms(codes, labels, codes, labels, {})["classification_loss"]
    np.testing.assert_allclose(np.asarray(loss), [softplus(-3.2)], rtol=1e-12)


def test_multi_hot_labels_spread_the_target_over_the_positives(float64):
    # v1 with both classes: the margin off both, logits (6.4, -1.6); the target (1/2, 1/2):
    # -(log p0 + log p1) / 2 = LSE(6.4, -1.6) - (6.4 - 1.6) / 2.  v2 with class 1 only: logits (0, 8 * 0.8):
    # -log p1 = softplus(0 - 6.4).  v3 with no label: no loss (the authors' code would divide by 0).
    model = _model()
    codes = keras.ops.convert_to_tensor(CODES)
    labels = keras.ops.convert_to_tensor(np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))
    loss = np.asarray(model.loss_terms(codes, labels, codes, labels, {})["classification_loss"])
    lse = np.logaddexp(6.4, -1.6)
    np.testing.assert_allclose(loss, [lse - 2.4, softplus(-6.4), 0.0], rtol=1e-12, atol=1e-15)


def test_class_codes_are_fixed_saved_and_hadamard_rows_orthogonal(tmp_path):
    # Bernoulli codes: the same from the same seed, another from another; not trained; in the saved model.
    model = OrthoHash(bits=16, input_shape=(8, 8, 1), num_classes=10)
    codes = model.class_codes.numpy()
    assert set(np.unique(codes)) == {-1.0, 1.0} and codes.shape == (10, 16)
    np.testing.assert_array_equal(codes, class_codes(10, 16, "bernoulli", 0))
    assert not np.array_equal(codes, class_codes(10, 16, "bernoulli", 1))
    assert all(id(w) != id(model.class_codes) for w in model.trainable_weights)
    model.class_codes.assign(-codes)
    model.save(tmp_path / "model.keras")
    np.testing.assert_array_equal(keras.saving.load_model(tmp_path / "model.keras").class_codes.numpy(), -codes)
    # Hadamard: the rows of [H; -H]; the first K pairwise orthogonal; H Sylvester's, H_2n = [[H, H], [H, -H]].
    hadamard = class_codes(20, 16, "hadamard")
    sylvester = np.ones((1, 1))
    while len(sylvester) < 16:
        sylvester = np.block([[sylvester, sylvester], [sylvester, -sylvester]])
    np.testing.assert_array_equal(hadamard[:16], sylvester)
    np.testing.assert_array_equal(hadamard[:16] @ hadamard[:16].T, 16 * np.eye(16))
    np.testing.assert_array_equal(hadamard[16:], -hadamard[:4])


def test_batch_norm_centres_each_bit_over_the_batch(digits):
    # In training the codes are normalized with the batch's statistics (gamma 1, beta 0 at first):
    # every bit has mean 0 and variance 1 - eps-ish over the batch: half the codes +1 and half -1 roughly.
    model = OrthoHash(bits=16, input_shape=(8, 8, 1), num_classes=10)
    codes = np.asarray(model(digits.images[:64], training=True))
    np.testing.assert_allclose(codes.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(codes.var(axis=0), 1, rtol=1e-2)
    assert OrthoHash(bits=16, input_shape=(8, 8, 1), batch_norm=False).code_norm is None


def test_bad_arguments_fail_in_one_line():
    for kwargs, pattern in [({"activation": "tanh"}, r"activation must be 'identity' .*Received: activation='tanh'"),
                            ({"multi_label": "x"}, r"multi_label must be one of .*Received: multi_label='x'"),
                            ({"codebook": "gauss"}, r"codebook must be one of .*Received: codebook='gauss'"),
                            ({"codebook": "hadamard", "bits": 24}, r"needs bits a power of 2 .*Received: bits=24"),
                            ({"scale": 0}, r"scale must be a positive number, or None for sqrt\(bits\). Received: scale=0")]:
        with pytest.raises(ValueError, match=pattern) as error:
            OrthoHash(**{"bits": 8, "input_shape": (8, 8, 1), **kwargs})
        assert "\n" not in str(error.value)


@pytest.mark.slow
def test_training_learns_codes_that_retrieve_by_label(digits, tmp_path):
    keras.utils.set_random_seed(0)
    untrained = OrthoHash(bits=16, input_shape=(8, 8, 1), num_classes=10)
    (xq, yq), (xd, yd) = digits.subset("query"), digits.subset("database")
    before = metrics.mean_average_precision(untrained.encode(xq), untrained.encode(xd), yq, yd)
    result = training.train("orthohash", data=digits, bits=16, seed=0, epochs=8, batch_size=50,
                            output_dir=str(tmp_path), verbose=0)
    after = result.scores["image"]["map"]
    # 10 balanced classes: random codes score about 0.1; training must at least double the
    # untrained encoder's mAP@all on held-out queries.
    assert after > 2 * before and after > 0.4, (before, after)
