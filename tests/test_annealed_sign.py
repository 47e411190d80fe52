import keras
import numpy as np
import pytest
import tensorflow as tf

from tfhash.callbacks import BetaSchedule
from tfhash.layers import AnnealedSign


class BetaProbe(keras.Model):
    """Dense -> AnnealedSign; its train step reports the beta the compiled graph read."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4)
        self.sign = AnnealedSign(beta=1.0)
        self.tracker = keras.metrics.Mean(name="loss")

    def call(self, x, training=False):
        return self.sign(self.dense(x), training=training)

    @property
    def metrics(self):
        return [self.tracker]

    def train_step(self, data):
        x, _ = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self(x, training=True) - 1.0))
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        self.tracker.update_state(loss)
        # Read inside the compiled step: shows what the graph used, not Python state.
        return {"loss": self.tracker.result(), "beta_in_step": tf.identity(self.sign.beta)}


def test_training_is_tanh_of_beta_x_and_inference_is_sign():
    layer = AnnealedSign(beta=2.0)
    x = np.array([[-1.0, -0.1, 0.0, 0.3]], "float32")
    # tanh(2x): tanh(-2) = -0.96403, tanh(-0.2) = -0.19738, 0, tanh(0.6) = 0.53705
    np.testing.assert_allclose(layer(x, training=True), [[-0.96403, -0.19738, 0.0, 0.53705]], atol=1e-5)
    # Inference: exact sign, sign(0) = +1 as SignPack's bit convention.
    np.testing.assert_array_equal(layer(x, training=False), [[-1, -1, 1, 1]])
    assert not layer.trainable_weights and len(layer.non_trainable_weights) == 1


def test_step_schedule_is_the_papers_list():
    schedule = BetaSchedule.steps([2, 5, 10, 15, 20], every=2).schedule
    assert [schedule(epoch, 0) for epoch in range(11)] == [2, 2, 5, 5, 10, 10, 15, 15, 20, 20, 20]
    grow = BetaSchedule.continuous(start=1.0, rate=2.0, per="step", maximum=10.0).schedule
    assert [grow(0, step) for step in range(5)] == [1.0, 2.0, 4.0, 8.0, 10.0]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["one_device", "mirrored"])
def test_beta_changes_inside_the_compiled_train_step(strategy, mirrored):
    dist = tf.distribute.OneDeviceStrategy("/cpu:0") if strategy == "one_device" else mirrored
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    with dist.scope():
        model = BetaProbe()
        model(x[:1])  # creates the variables inside the strategy's scope
        model.compile(optimizer="sgd")
        model.optimizer.build(model.trainable_variables)
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: seen.append(float(np.ravel(logs["beta_in_step"])[0]))
    )
    data = tf.data.Dataset.from_tensor_slices((x, x)).batch(8, drop_remainder=True)
    history = model.fit(
        data, epochs=3, verbose=0,
        callbacks=[BetaSchedule.continuous(start=1.0, rate=2.0, per="step"), record],
    )
    # 2 steps per epoch, beta = 2 ** step: the graph read every new value, not the traced 1.0.
    assert seen == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert history.history["beta"] == [2.0, 8.0, 32.0]


def test_beta_survives_keras_save_and_reload(tmp_path):
    inputs = keras.Input((3,))
    layer = AnnealedSign(beta=1.0)
    model = keras.Model(inputs, layer(inputs))
    layer.beta.assign(15.0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert float(reloaded.layers[-1].beta.numpy()) == 15.0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="beta must be positive. Received: beta=0"):
        AnnealedSign(beta=0)
    with pytest.raises(ValueError, match="positive betas.*Received: values=\\[2.0, -1.0\\]"):
        BetaSchedule.steps([2, -1])
    with pytest.raises(ValueError, match="per in \\('epoch', 'step'\\). Received: .*per='batch'"):
        BetaSchedule.continuous(per="batch")


# Inputs of the probe below: float32 numbers (so float64 sees the same values),
# spread over tanh's curved part for the betas the schedule reaches (beta x up to 1.6).
PROBE = np.array([-0.2, -0.05, 0.0, 0.0125, 0.1], "float32")
# The layer computes in float32: beta * x is rounded once (relative 2**-24, moving
# tanh by at most 2**-24 * max_u u sech^2 u < 2**-24 * 0.45), and TensorFlow's
# float32 tanh is accurate to a few ulps (2**-24 each near 1). 1e-6 is about 17
# ulps at 1: room for any faithful float32 tanh, and under 2e-6 of the gap between
# tanh(8 x) and tanh(x) the test tells apart (0.56 at x = 0.1).
TOLERANCE = 1e-6


class ProbeOutputs(BetaProbe):
    """`BetaProbe` whose compiled train step also returns the layer's training
    output on `PROBE`: what the graph fit runs computes, step by step."""

    def train_step(self, data):
        logs = super().train_step(data)
        return {**logs, "probe": self.sign(tf.constant(PROBE), training=True)}


def test_training_output_is_tanh_of_the_beta_the_schedule_set():
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    model = ProbeOutputs()
    model(x[:1])
    model.compile(optimizer="sgd")
    layer = model.sign
    # A tf.function traced while beta is still its initial 1.0, called again after
    # fit: a beta frozen into the graph at trace time would show there.
    traced = tf.function(lambda v: layer(v, training=True))
    np.testing.assert_allclose(traced(PROBE), np.tanh(PROBE.astype(np.float64)), rtol=0, atol=TOLERANCE)
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: seen.append(np.asarray(logs["probe"], np.float64)))
    data = tf.data.Dataset.from_tensor_slices((x, x)).batch(4)  # 4 steps: beta 1, 2, 4, 8
    model.fit(data, epochs=1, verbose=0, callbacks=[BetaSchedule.continuous(start=1.0, rate=2.0, per="step"), record])
    beta_now = float(layer.beta.numpy())
    assert beta_now == 8.0 and layer.initial_beta == 1.0
    # The expected outputs, in float64 from the float32 inputs (exact) and the betas
    # the schedule set (powers of 2, exact in float32).
    x64 = PROBE.astype(np.float64)
    assert len(seen) == 4
    for step, output in enumerate(seen):  # inside fit's compiled step
        np.testing.assert_allclose(output, np.tanh(2.0**step * x64), rtol=0, atol=TOLERANCE, err_msg=f"step {step}")
    expected, frozen = np.tanh(beta_now * x64), np.tanh(layer.initial_beta * x64)
    for output in (layer(PROBE, training=True), traced(PROBE)):  # called directly, and through the old trace
        np.testing.assert_allclose(np.asarray(output, np.float64), expected, rtol=0, atol=TOLERANCE)
        assert np.abs(np.asarray(output, np.float64) - frozen).max() > 0.5  # not the initial beta's output
    assert traced.experimental_get_tracing_count() == 1  # the same graph, not a retrace
    # Inference ignores beta: sign(x), sign(0) = +1.
    np.testing.assert_array_equal(layer(PROBE, training=False), [-1, -1, 1, 1, 1])
