"""Checks every method must pass, in the spirit of keras-hub's TestCase:
`tests/test_methods.py` applies them to each record of `tfhash.registry`."""

import keras
import numpy as np
import tensorflow as tf

from tfhash import training
from tfhash.export import SIGNATURE, export_savedmodel


def train_tiny(method, data, strategy="one_device", **settings):
    """A few steps of a method through the one training path (seed 0, 16 bits)."""
    return training.train(method, data=data, bits=16, seed=0, strategy=strategy, score=False, verbose=0, **settings)


def run_strategy_invariance(method, data, one_device, mirrored, settings):
    """Two replicas take the steps one device takes.

    Every method gathers the global batch for its pairs and balance counts,
    divides its loss by the global batch and draws its randomness for the
    global batch, so the algorithm is the same on N replicas; only the order of
    the all-reduce's sums differs. In float64 (the caller sets floatx) that
    reordering perturbs a gradient by about 2**-52 (2e-16) times the sum of its
    terms' magnitudes, O(1) here. Adam divides by sqrt(v) + 1e-7, so a step's
    update moves by at most lr * 2e-16 / 1e-7 = 2e-12 (lr = 1e-3), and over
    the ~20 steps of these runs by well under 1e-10: atol 1e-10 (and rtol 1e-9)
    bounds that. An algorithmic difference shows at float32's scale or above
    (BGAN's balance counted over one replica's rows moved the first forward pass
    by 5e-5 relative), far outside the bound, on any CPU.
    """
    assert keras.config.floatx() == "float64"
    one = train_tiny(method, data, one_device, **settings)
    two = train_tiny(method, data, mirrored, **settings)
    assert two.model.distribute_strategy.num_replicas_in_sync == 2
    weights_one, weights_two = one.model.get_weights(), two.model.get_weights()
    assert len(weights_one) == len(weights_two) and all(w.dtype == np.float64 for w in weights_one)
    for a, b in zip(weights_two, weights_one):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
    for key, values in one.history.items():
        np.testing.assert_allclose(two.history[key], values, rtol=1e-9, atol=1e-10, err_msg=key)


def run_saving_test(encoder, inputs, path):
    """A `.keras` reload is the same class and config and gives identical codes."""
    encoder.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded) is type(encoder)
    assert reloaded.get_config() == encoder.get_config()
    np.testing.assert_array_equal(reloaded.encode(inputs), encoder.encode(inputs))


def run_config_round_trip(model):
    """get_config -> from_config -> get_config is the identity."""
    clone = type(model).from_config(model.get_config())
    assert clone.get_config() == model.get_config()


def run_export_test(encoder, inputs, base_dir):
    """The SavedModel's serving signature takes the encoder's serving inputs with a
    free batch and returns its codes: packed codes equal to `encode`, for two batch sizes."""
    path = export_savedmodel(encoder, str(base_dir), name="encoder", version=1)
    signature = tf.saved_model.load(path).signatures[SIGNATURE]
    (name, spec), = encoder.serving_inputs().items()
    assert set(signature.structured_input_signature[1]) == {name}
    assert signature.structured_input_signature[1][name].shape.as_list() == [None, *spec.shape[1:]]
    expected = encoder.encode(inputs)
    for n in (1, len(inputs)):
        out = signature(**{name: tf.constant(np.asarray(inputs[:n]).astype(spec.dtype.as_numpy_dtype))})
        np.testing.assert_array_equal(out["binary_codes"].numpy(), expected[:n])
        assert out["codes"].shape == (n, encoder.bits)
