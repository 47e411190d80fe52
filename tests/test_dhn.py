"""DHN end to end on scikit-learn digits (8x8): tiny, real, fast."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import method_checks
from method_checks import float64  # noqa: F401  (a fixture)
from tfhash import metrics
from tfhash.data import load_protocol, pairwise_batches
from tfhash.models import DHN, Backbone


@pytest.fixture(scope="module")
def digits():
    return load_protocol("digits")


def _model(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    model = DHN(bits=16, input_shape=(8, 8, 1), **kwargs)
    model.build((None, 8, 8, 1))
    return model


def _map(model, data):
    (xq, yq), (xd, yd) = data.subset("query"), data.subset("database")
    return metrics.mean_average_precision(model.encode(xq), model.encode(xd), yq, yd)


def test_encode_is_packed_sign_of_outputs(digits):
    model = _model()
    images = digits.images[:40]
    codes = model.encode(images)
    assert codes.dtype == np.uint8 and codes.shape == (40, 2)
    np.testing.assert_array_equal(codes, np.packbits(model.predict(images, verbose=0) >= 0, axis=-1))


def _dhn_objective_by_hand(z, labels, alpha, quantization_weight):
    """DHN's objective written out from its equation (docs/methods/dhn.md), with
    balanced pairs: per row i, mean_j w_ij [softplus(t_ij) - s_ij t_ij] with
    t_ij = alpha <z_i, z_j> (columns z_j held constant), w_ij = T / P for the P
    similar of the T = n^2 pairs and 1 otherwise; Q_i = sum_k log cosh(|z_ik| - 1).
    Returns (loss, mean pairwise term, mean quantization term)."""
    n = z.shape[0]
    s = tf.constant((labels[:, None] == labels[None, :]).astype(np.float64))
    w = tf.where(s > 0, n * n / tf.reduce_sum(s), tf.ones_like(s))
    t = alpha * tf.matmul(z, tf.stop_gradient(z), transpose_b=True)
    pairwise = tf.reduce_mean(w * (tf.math.log1p(tf.exp(t)) - s * t), axis=1)
    quantization = tf.reduce_sum(tf.math.log(tf.cosh(tf.abs(z) - 1.0)), axis=1)
    loss = tf.reduce_mean(pairwise + quantization_weight * quantization)
    return loss, tf.reduce_mean(pairwise), tf.reduce_mean(quantization)


@pytest.mark.slow
def test_one_steps_loss_is_its_weighted_terms_by_hand(digits, float64):
    images, labels = digits.subset("train")
    x, y = images[:12], labels[:12]
    # Weights that no term shares, so a dropped or swapped weight shows.
    alpha, weight = 0.3, 0.37
    model = _model(alpha=alpha, balanced=True, quantization_weight=weight)
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        z = model(x, training=True)
        assert z.dtype == tf.float64
        loss, pairwise, quantization = _dhn_objective_by_hand(z, y, alpha, weight)
    gradients = tape.gradient(loss, variables)
    before = method_checks.snapshot(variables)
    # The terms are of one size (pairwise 1.2, 0.37 x quantization 2.0 here): dropping either moves the loss by a third or more.
    assert 0.2 < float(weight * quantization) / float(loss) < 0.9
    logs = model.fit(method_checks.one_batch(x, y), epochs=1, verbose=0).history
    # What the step logged (before its update) is the objective by hand...
    method_checks.assert_logs(logs, {"loss": loss, "pairwise_loss": pairwise, "quantization_loss": quantization})
    # ...and what it descended is too: SGD(1) moved every weight by minus its gradient.
    method_checks.assert_sgd_step(before, variables, gradients)


@pytest.mark.slow
def test_fit_learns_codes_that_retrieve_by_label(digits):
    model = _model()
    untrained = _map(model, digits)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, labels = digits.subset("train")
    history = model.fit(pairwise_batches(images, labels, 50, seed=0), epochs=15, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0]
    trained = _map(model, digits)
    # 10 balanced classes: random codes score about 0.1; training must at least double
    # the untrained encoder's mAP@all on held-out queries.
    assert trained > 2 * untrained and trained > 0.5, (untrained, trained)


@pytest.mark.slow
def test_keras_save_reload_gives_identical_codes(digits, tmp_path):
    model = _model(balanced=True, alpha=0.5, quantization="squared")
    model.compile(optimizer="adam")
    images, labels = digits.subset("train")
    model.fit(pairwise_batches(images, labels, 50), epochs=1, verbose=0)
    path = str(tmp_path / "dhn.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded, DHN)
    assert reloaded.get_config() == model.get_config()
    np.testing.assert_array_equal(reloaded.encode(digits.images), model.encode(digits.images))


def test_config_round_trip():
    model = _model(alpha=0.5, quantization_weight=0.3)
    clone = DHN.from_config(model.get_config())
    assert clone.get_config() == model.get_config()


def test_bad_images_are_refused_with_expected_and_received(digits):
    model = _model()
    with pytest.raises(ValueError, match=r"shape \(None, 8, 8, 1\). Received: shape=\(4, 8, 8\)"):
        model.encode(digits.images[:4, ..., 0])
    with pytest.raises(ValueError, match="numeric array.*Received: dtype=<U1"):
        model.encode(np.full((2, 8, 8, 1), "a"))
    nan = digits.images[:5].astype("float32")
    nan[3, 2, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"must be finite. Received NaN or inf in 1 image\(s\), first at index \[3\]"):
        model.encode(nan)
    with pytest.raises(ValueError, match="empty"):
        model.encode(np.zeros((0, 8, 8, 1), np.uint8))
    # The caller's array is untouched.
    assert np.isnan(nan[3, 2, 2, 0]) and nan.shape == (5, 8, 8, 1)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match="Unknown backbone 'ResNet9000'.*'small_cnn'.*MobileNetV2"):
        Backbone("ResNet9000", input_shape=(8, 8, 1))


@pytest.mark.slow
def test_keras_applications_trunk_by_name_with_local_weights(digits, tmp_path):
    # MobileNetV2 needs 3 channels and >= 32 pixels: the backbone repeats the gray
    # channel and resizes the 8x8 digits inside the graph.
    kwargs = dict(backbone="MobileNetV2")
    keras.utils.set_random_seed(0)
    model = DHN(bits=8, input_shape=(8, 8, 1), **kwargs)
    images, _ = digits.subset("train")
    assert model.encode(images[:4]).shape == (4, 1)  # 8x8x1 digits through the 3-channel trunk
    # Every trunk weight moved off its initial value (batch norm's statistics too, which a
    # fresh trunk of any seed starts alike), so loading is what makes the two equal.
    rng = np.random.default_rng(0)
    for weight in model.backbone.trunk.weights:
        weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype(weight.dtype))
    weights = str(tmp_path / "trunk.weights.h5")
    model.backbone.trunk.save_weights(weights)
    keras.utils.set_random_seed(1)
    other = DHN(bits=8, input_shape=(8, 8, 1), backbone_weights=weights, **kwargs)
    for a, b in zip(model.backbone.trunk.weights, other.backbone.trunk.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_trunk_input_size_is_for_named_trunks_only():
    with pytest.raises(ValueError, match=r"the small CNN reads them as they are. Received: input_size=64"):
        DHN(bits=8, input_shape=(8, 8, 1), backbone_input_size=64)
    with pytest.raises(ValueError, match=r"input_size must be at least 32. Received: input_size=16"):
        DHN(bits=8, input_shape=(8, 8, 1), backbone="EfficientNetLite0", backbone_input_size=16)
