"""The pairwise family (`tfhash.models.family`): a member that writes only its
loss terms and defaults gets the step, the config, the plan and the strategy
invariance; checked on a toy member."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import method_checks
from method_checks import float64  # noqa: F401  (a fixture)
from tfhash.data import batches
from tfhash.losses import label_similarity
from tfhash.models import DHN
from tfhash.models.base import finish_construction, init_parameters
from tfhash.models.family import CodeMemory, PairwiseHashModel


@keras.saving.register_keras_serializable(package="tfhash_tests")
class Toy(PairwiseHashModel):
    """A member: squared inner-product error on pairs, a code-norm term, and a
    term that reads the row index (so the batch's fields reach the terms)."""

    term_weights = {"pair_loss": 1.0, "norm_loss": "norm_weight", "index_loss": 0.25}
    fields = ("images", "labels", "index")

    def __init__(self, norm_weight=0.5, **kwargs):
        super().__init__(**kwargs)
        self.norm_weight = float(norm_weight)
        finish_construction(self, Toy)

    def loss_terms(self, codes, labels, all_codes, all_labels, batch):
        s = tf.cast(label_similarity(labels, all_labels), codes.dtype)
        products = tf.matmul(codes, all_codes, transpose_b=True) / self.bits
        return {"pair_loss": tf.reduce_mean(tf.square(s - products), axis=1),
                "norm_loss": tf.reduce_sum(tf.square(codes), axis=1),
                "index_loss": tf.cast(batch["index"], codes.dtype) * tf.reduce_mean(codes, axis=1)}


def _toy(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return Toy(bits=16, input_shape=(8, 8, 1), **kwargs)


def test_a_member_gets_trackers_config_and_its_settings_through_the_hierarchy():
    model = _toy(norm_weight=0.3, activation="identity")
    assert model.built and [m.name for m in model.metrics] == ["loss", "pair_loss", "norm_loss", "index_loss"]
    # The registry's walk: the member's own arguments, the family's, then ImageArguments', literal defaults.
    parameters = init_parameters(Toy)
    assert list(parameters)[:2] == ["norm_weight", "activation"]
    assert {"bits", "input_shape", "backbone", "freeze_backbone"} <= set(parameters)
    assert parameters["backbone"].default == "small_cnn"
    config = model.get_config()
    assert (config["norm_weight"], config["activation"], config["bits"]) == (0.3, "identity", 16)
    method_checks.run_config_round_trip(model)
    method_checks.run_config_round_trip(DHN(bits=8, input_shape=(8, 8, 1), activation="sign"))


def test_a_member_that_keeps_no_attribute_or_returns_other_terms_is_refused(digits_data):
    class Forgetful(Toy):
        def __init__(self, margin=1.0, **kwargs):
            super().__init__(**kwargs)
            finish_construction(self, Forgetful)

    with pytest.raises(ValueError, match=r"Forgetful takes \['margin'\] but keeps no attribute of that name"):
        Forgetful(bits=8, input_shape=(8, 8, 1))

    class Misnamed(Toy):
        def loss_terms(self, codes, labels, all_codes, all_labels, batch):
            return {"norm_loss": tf.reduce_sum(tf.square(codes), axis=1)}

    model = Misnamed(bits=8, input_shape=(8, 8, 1))
    model.compile(optimizer="sgd")
    images, labels = digits_data.subset("train")
    with pytest.raises(ValueError, match=r"must return the terms of term_weights, in order: \['pair_loss', 'norm_loss', "
                                         r"'index_loss'\]. Received: \['norm_loss'\]"):
        model.fit(batches(Toy.fields, images=images[:16], labels=labels[:16], batch_size=8), epochs=1, verbose=0)


@pytest.mark.parametrize("activation", ["tanh", "identity", "sign"])
def test_the_head_takes_the_activation(activation):
    model = _toy(activation=activation)
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1)).astype("uint8")
    z = model.predict(images, verbose=0)
    x = model.hash_layer.dense(model.backbone(images)).numpy()
    expected = {"tanh": np.tanh(x), "identity": x, "sign": np.where(x >= 0, 1.0, -1.0)}[activation]
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(model.encode(images), np.packbits(x >= 0, axis=-1))


@pytest.mark.slow
def test_one_steps_loss_is_its_weighted_terms_by_hand(digits_data, float64):
    images, labels = digits_data.subset("train")
    x, y, index = images[:12], labels[:12], np.arange(12, dtype=np.float32) + 3
    # Weights that no term shares, so a dropped or swapped weight shows.
    model = _toy(norm_weight=0.37)
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        z = model(x, training=True)
        # The toy's objective by hand: columns held constant, s_ij = [y_i == y_j], K = 16.
        s = (y[:, None] == y[None, :]).astype(np.float64)
        pair = tf.reduce_mean(tf.square(s - tf.matmul(z, tf.stop_gradient(z), transpose_b=True) / 16), axis=1)
        norm = tf.reduce_sum(tf.square(z), axis=1)
        offset = index.astype(np.float64) * tf.reduce_mean(z, axis=1)
        loss = tf.reduce_mean(pair + 0.37 * norm + 0.25 * offset)
    gradients = tape.gradient(loss, variables)
    before = method_checks.snapshot(variables)
    # Each weighted term is at least 1% of the loss, so dropping one moves it far past the tolerance.
    assert min(abs(float(tf.reduce_mean(t))) for t in (pair, 0.37 * norm, 0.25 * offset)) > 0.01 * abs(float(loss))
    data = method_checks.one_batch({"images": x, "labels": y.astype(np.int32), "index": index})
    logs = model.fit(data, epochs=1, verbose=0).history
    method_checks.assert_logs(logs, {"loss": loss, "pair_loss": tf.reduce_mean(pair),
                                     "norm_loss": tf.reduce_mean(norm), "index_loss": tf.reduce_mean(offset)})
    method_checks.assert_sgd_step(before, variables, gradients)


def test_tuples_in_field_order_and_evaluate_take_the_same_step(digits_data):
    images, labels = digits_data.subset("train")
    x, y = images[:16], labels[:16]
    model = _toy()
    model.compile(optimizer="sgd")
    as_dict = model.evaluate(method_checks.one_batch({"images": x, "labels": y, "index": np.arange(16.0)}),
                             verbose=0, return_dict=True)
    as_tuple = model.evaluate(method_checks.one_batch(x, y, np.arange(16.0)), verbose=0, return_dict=True)
    assert as_dict == as_tuple


def test_the_default_plan_builds_compiles_and_feeds_the_fields(digits_data):
    plan = Toy.training_plan(digits_data, bits=16, seed=0, strategy=tf.distribute.get_strategy(),
                             model={"norm_weight": 0.2}, train={"learning_rate": 1e-3, "batch_size": 64, "epochs": 1})
    assert isinstance(plan.model, Toy) and plan.model.norm_weight == 0.2 and plan.epochs == 1
    assert plan.model.image_shape == digits_data.images.shape[1:]
    assert float(plan.model.optimizer.learning_rate) == pytest.approx(1e-3)
    assert set(plan.batches.element_spec) == set(Toy.fields)
    history = plan.model.fit(plan.batches, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


@pytest.mark.slow
def test_mirrored_strategy_takes_one_devices_steps(digits_data, mirrored, float64):
    # As tests/method_checks.run_strategy_invariance, for a member no registry names.
    images, labels = digits_data.subset("train")

    def train(strategy):
        with strategy.scope():
            model = _toy(norm_weight=0.3)
            model.compile(optimizer=keras.optimizers.Adam(1e-3))
        data = batches(Toy.fields, images=images[:128], labels=labels[:128], batch_size=64, seed=0)  # 2 steps an epoch
        history = model.fit(data, epochs=2, verbose=0).history
        return model.get_weights(), history

    (one, one_history), (two, two_history) = train(tf.distribute.OneDeviceStrategy("/cpu:0")), train(mirrored)
    for a, b in zip(two, one, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
    for key, values in one_history.items():
        np.testing.assert_allclose(two_history[key], values, rtol=1e-9, atol=1e-10, err_msg=key)


def test_code_memory_keeps_each_rows_latest_code_and_is_not_saved():
    memory = CodeMemory(rows=5, bits=8, label_shape=(), name="memory")
    codes = np.arange(16, dtype=np.float32).reshape(2, 8)
    all_codes, all_labels = memory(tf.constant([4.0, 1.0]), tf.constant(codes), tf.constant([3, 1], "int32"))
    # Rows 4 and 1 hold the batch's codes and labels; rows not yet written are 0; labels keep their dtype.
    np.testing.assert_array_equal(all_codes.numpy()[[4, 1]], codes)
    np.testing.assert_array_equal(all_codes.numpy()[[0, 2, 3]], 0)
    assert all_labels.dtype == tf.int32 and all_labels.numpy().tolist() == [0, 1, 0, 0, 3]
    # A later write of row 1 replaces it.
    all_codes, all_labels = memory(tf.constant([1.0]), tf.constant(-codes[:1]), tf.constant([7], "int32"))
    np.testing.assert_array_equal(all_codes.numpy()[1], -codes[0])
    assert all_labels.numpy().tolist() == [0, 7, 0, 0, 3]
    # Training state: a saved model leaves it out.
    store = {}
    memory.save_own_variables(store)
    assert store == {}
    assert CodeMemory.from_config(memory.get_config()).get_config() == memory.get_config()
