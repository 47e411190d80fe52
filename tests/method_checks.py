"""Checks every method must pass, in the spirit of keras-hub's TestCase:
`tests/test_methods.py` applies them to each record of `tfhash.registry`."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfhash import training
from tfhash.export import SIGNATURE, export_savedmodel


def few_steps(data, train_rows=192, held_out=100, queries=50):
    """`data` (every image, text and label still there) on a smaller split, for checks that do
    not depend on its size: 192 training rows, three batches of the tiny 64, so an epoch is 3
    steps; 50 queries; a database of those rows and 100 others (what the plans validate on)."""
    split = data.split
    train = split.train[:train_rows]
    others = np.setdiff1d(split.database, split.train)[:held_out]
    return dataclasses.replace(data, split=dataclasses.replace(
        split, query=split.query[:queries], train=train, database=np.sort(np.concatenate([train, others]))))


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
    the few steps of these runs (3 an epoch, 9 at most) by well under 1e-10: atol 1e-10 (and rtol 1e-9)
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


@pytest.fixture
def float64():
    """float64 layers and tensors for one test (import it into a test module to
    use it). Keras caches its global dtype policy at the first layer, so the
    policy is set along with floatx."""
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


# Tolerances of the one-step loss checks, all in float64 (unit roundoff 2**-53,
# 1.1e-16). A hand-written loss and the model's differ only in the order of their
# sums: over the few hundred terms of a tiny batch that moves a value by at most
# a few hundred roundoffs of its terms' magnitudes (O(1) to O(10) here), under
# 1e-12 relative to the total. LOSS_RTOL = 1e-9 is a thousand times that, and
# ten million times below the smallest term a mutant drops or re-weighs in these
# checks (each test asserts that every weighted term is 1% of its loss or more).
# Gradients are sums of the same kind, over more terms (every weight of a head
# sees the whole batch), of O(1) here: GRADIENT_ATOL = 1e-10 and GRADIENT_RTOL =
# 1e-8 leave the same margins. (Measured when written: at most 4e-16 relative on
# the losses, 5e-15 absolute on the steps.)
LOSS_RTOL = 1e-9
GRADIENT_RTOL, GRADIENT_ATOL = 1e-8, 1e-10


def one_batch(*parts):
    """A dataset of one batch: `fit` on it takes exactly one step."""
    return tf.data.Dataset.from_tensors(tuple(parts) if len(parts) > 1 else parts[0])


def snapshot(variables):
    return [np.array(v.numpy()) for v in variables]


def assert_sgd_step(before, variables, gradients, learning_rate=1.0, what="weights"):
    """`variables` moved from `before` by one plain SGD step down `gradients`
    (the gradients of the hand-written loss): the optimized loss is that loss."""
    assert len(before) == len(variables) == len(gradients) and before
    for old, variable, gradient in zip(before, variables, gradients):
        expected = old - learning_rate * np.asarray(gradient)
        np.testing.assert_allclose(variable.numpy(), expected, rtol=GRADIENT_RTOL, atol=GRADIENT_ATOL,
                                   err_msg=f"{what}: {variable.path}")
    assert any(not np.array_equal(old, v.numpy()) for old, v in zip(before, variables)), f"{what} did not move"


def assert_logs(logs, expected):
    """One-step `fit` history (a list of one value per key) against values by hand."""
    for key, value in expected.items():
        (logged,) = logs[key]
        np.testing.assert_allclose(logged, float(value), rtol=LOSS_RTOL, atol=0, err_msg=key)


def map_by_hand(query_codes, database_codes, query_labels, database_labels):
    """mAP@all of Hamming ranking written out, apart from `tfhash.metrics`: for
    each query, rank the database by Hamming distance (ties by database index)
    and average the precision at the rank of each relevant item (one sharing a
    label); a query with no relevant item scores 0. Labels are class ids or
    multi-hot rows. The value `tfhash` reports for a protocol whose metric is
    mAP@all (digits, and the image-text protocols)."""
    query_bits = np.unpackbits(np.asarray(query_codes, np.uint8), axis=1)
    database_bits = np.unpackbits(np.asarray(database_codes, np.uint8), axis=1)
    query_labels, database_labels = np.asarray(query_labels), np.asarray(database_labels)
    precisions = []
    for q in range(len(query_bits)):
        distance = (query_bits[q] != database_bits).sum(axis=1)
        if query_labels.ndim == 1:
            relevant = database_labels == query_labels[q]
        else:
            relevant = (database_labels.astype(np.int64) @ query_labels[q].astype(np.int64)) > 0
        ranks = np.flatnonzero(relevant[np.argsort(distance, kind="stable")]) + 1
        precisions.append(np.mean(np.arange(1, len(ranks) + 1) / ranks) if len(ranks) else 0.0)
    return float(np.mean(precisions))


# Two float64 means of the same per-query precisions, summed in another order:
# they differ by a few roundoffs (1e-16) of mAP's O(1) magnitude.
MAP_RTOL = 1e-12


def weighted(model, terms):
    """A family member's per-example loss from its terms: each term times its
    weight (`term_weights`: an attribute's name or a constant), summed."""
    return sum((getattr(model, w) if isinstance(w, str) else w) * terms[name]
               for name, w in model.term_weights.items())
