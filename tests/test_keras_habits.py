"""Keras habits kept (issue 22): models are built when made, so `summary`,
`count_params`, `inputs`/`outputs`, `save`, `BackupAndRestore` and
`TensorBoard` work before any data, and `export` writes the serving signature
`tfhash export` writes."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfhash import models
from tfhash.data import pairwise_batches
from tfhash.export import SIGNATURE, TFLiteEncoder, export_savedmodel
from tfhash.models import DHN

# Every encoder (HashModel) and every trainer, tiny.
CONSTRUCTORS = {
    "DHN": lambda: DHN(bits=16, input_shape=(8, 8, 1)),
    "BGAN": lambda: models.BGAN(bits=16, input_shape=(8, 8, 1)),
    "DSHGAN": lambda: models.DSHGAN(bits=16, input_shape=(8, 8, 1), num_classes=3),
    "SSAH": lambda: models.SSAH(bits=16, num_labels=5, vocabulary_size=30, num_train=20, input_shape=(8, 8, 3),
                                hidden_units=32, feature_units=16, discriminator_units=8),
    "UGACH": lambda: models.UGACH(bits=16, input_shape=(8, 8, 3), vocabulary_size=30, feature_dims=10,
                                  hidden_units=32),
    "BGANEncoder": lambda: models.BGANEncoder(bits=16, input_shape=(8, 8, 1)),
    "DSHGANEncoder": lambda: models.DSHGANEncoder(bits=16, input_shape=(8, 8, 1)),
    "SSAHImageEncoder": lambda: models.SSAHImageEncoder(bits=16, num_labels=5, input_shape=(8, 8, 3),
                                                        feature_units=16),
    "SSAHTextEncoder": lambda: models.SSAHTextEncoder(bits=16, num_labels=5, vocabulary_size=30, hidden_units=32,
                                                      feature_units=16),
    "UGACHImageEncoder": lambda: models.UGACHImageEncoder(bits=16, input_shape=(8, 8, 3), feature_dims=10,
                                                          hidden_units=32),
    "UGACHTextEncoder": lambda: models.UGACHTextEncoder(bits=16, vocabulary_size=30, hidden_units=32),
}
ENCODERS = [name for name in CONSTRUCTORS if issubclass(getattr(models, name), models.HashModel)]


def _train(data, n=None):
    images, labels = data.subset("train")
    return images[:n], labels[:n]


def _tiny_dhn(seed=0):
    keras.utils.set_random_seed(seed)
    model = DHN(bits=16, input_shape=(8, 8, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def _values(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_models_are_built_when_made(name):
    model = CONSTRUCTORS[name]()
    assert model.built
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    assert "Total params" in "\n".join(lines)
    assert model.count_params() == sum(int(np.prod(w.shape)) for w in model.weights) > 0
    # Building again (as code written for unbuilt models does) changes nothing.
    before = _values(model)
    model.build(None)
    assert all(np.array_equal(a, b) for a, b in zip(before, _values(model), strict=True))


@pytest.mark.parametrize("name", ENCODERS)
def test_encoders_have_a_functional_models_inputs_and_outputs(name):
    encoder = CONSTRUCTORS[name]()
    [(input_name, spec)] = encoder.serving_inputs().items()
    [inputs], [outputs] = encoder.inputs, encoder.outputs
    assert inputs is encoder.input and outputs is encoder.output
    assert (inputs.name, inputs.dtype, tuple(inputs.shape)) == (input_name, spec.dtype.name, tuple(spec.shape))
    assert (outputs.dtype, tuple(outputs.shape)) == ("float32", (None, encoder.bits))
    # A functional model on them computes the encoder's relaxed codes.
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, *spec.shape[1:])).astype(spec.dtype.as_numpy_dtype)
    functional = keras.Model(encoder.inputs, encoder.outputs)
    np.testing.assert_allclose(functional.predict(batch, verbose=0), encoder.predict(batch, verbose=0), atol=1e-6)


class _BuiltLater(DHN):
    """A subclass with its own `__init__`: DHN's does not build it (what every model did before)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)


def test_building_when_made_keeps_the_initial_weights():
    def made(cls):
        keras.utils.set_random_seed(0)
        model = cls(bits=16, input_shape=(8, 8, 1), dropout=0.2)
        built_when_made = model.built
        model.build((None, 8, 8, 1))
        after = DHN(bits=8, input_shape=(8, 8, 1))  # what is made next is not shifted either
        return built_when_made, _values(model), _values(after)

    now, old = made(DHN), made(_BuiltLater)
    assert now[0] and not old[0]
    for a, b in zip(now[1] + now[2], old[1] + old[2], strict=True):
        np.testing.assert_array_equal(a, b)


def test_save_and_load_before_fit(digits_data, tmp_path):
    model = _tiny_dhn()
    path = str(tmp_path / "dhn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.built and type(loaded) is DHN
    for a, b in zip(_values(model), _values(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    images = digits_data.images[:20]
    np.testing.assert_array_equal(loaded.encode(images), model.encode(images))


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.weights = _values(self.model)  # the state the backup holds
            self.iterations = int(self.model.optimizer.iterations.numpy())
            raise RuntimeError("interrupted")


class _AtStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = _values(self.model)
        self.iterations = int(self.model.optimizer.iterations.numpy())


def test_backup_and_restore_resumes_an_interrupted_fit(digits_data, tmp_path):
    images, labels = _train(digits_data, 256)
    batches = pairwise_batches(images, labels, 64, seed=0)
    backup = str(tmp_path / "backup")

    first, interrupt = _tiny_dhn(seed=0), _Interrupt(epoch=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(batches, epochs=3, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup), interrupt])
    assert interrupt.iterations == 4  # one epoch of 256 / 64 steps

    # A fresh model (other initial weights) resumes from the backup: epoch 1, with epoch 0's weights and steps.
    second, start = _tiny_dhn(seed=1), _AtStart()
    history = second.fit(batches, epochs=3, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup), start])
    assert history.epoch == [1, 2]
    assert start.iterations == interrupt.iterations
    for a, b in zip(start.weights, interrupt.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(second.optimizer.iterations.numpy()) == 3 * 4
    assert not os.path.exists(os.path.join(backup, "latest.weights.h5"))  # removed once training ends


def test_tensorboard_writes_event_files(digits_data, tmp_path):
    pytest.importorskip("tensorboard")
    images, labels = _train(digits_data, 128)
    model = _tiny_dhn()
    log_dir = str(tmp_path / "logs")
    model.fit(pairwise_batches(images, labels, 64, seed=0), epochs=1, verbose=0,
              callbacks=[keras.callbacks.TensorBoard(log_dir)])
    events = glob.glob(os.path.join(log_dir, "train", "events.out.tfevents.*"))
    assert events
    tags = {value.tag for path in events for event in tf.compat.v1.train.summary_iterator(path)
            for value in event.summary.value}
    assert {"epoch_loss", "epoch_pairwise_loss", "epoch_quantization_loss"} <= tags


def _serving_default(path):
    signature = tf.saved_model.load(path).signatures[SIGNATURE]
    _, inputs = signature.structured_input_signature
    described = {name: (spec.dtype.name, tuple(spec.shape)) for name, spec in inputs.items()}
    outputs = {name: (spec.dtype.name, tuple(spec.shape)) for name, spec in signature.structured_outputs.items()}
    return signature, described, outputs


def test_export_writes_tfhash_exports_serving_signature(digits_data, tmp_path):
    model = _tiny_dhn()
    images, labels = _train(digits_data, 128)
    model.fit(pairwise_batches(images, labels, 64, seed=0), epochs=1, verbose=0)
    path = str(tmp_path / "exported")
    model.export(path, verbose=False)

    signature, inputs, outputs = _serving_default(path)
    assert inputs == {"images": ("uint8", (None, 8, 8, 1))}
    assert outputs == {"codes": ("float32", (None, 16)), "binary_codes": ("uint8", (None, 2))}
    # The signature `tfhash export` (export_savedmodel) writes.
    _, cli_inputs, cli_outputs = _serving_default(export_savedmodel(model, str(tmp_path / "serving"), name="dhn"))
    assert (inputs, outputs) == (cli_inputs, cli_outputs)

    digits = digits_data.images[:32]
    served = signature(images=tf.constant(digits))
    np.testing.assert_array_equal(served["binary_codes"].numpy(), model.encode(digits))
    np.testing.assert_allclose(served["codes"].numpy(), model.encode_real(digits), atol=1e-5)

    # Exporting again replaces the folder whole.
    model.export(path, verbose=False)
    assert _serving_default(path)[1:] == (inputs, outputs)


def test_export_of_text_encoders_and_trainers(tmp_path, capsys):
    ssah = CONSTRUCTORS["SSAH"]()
    ssah.export(str(tmp_path / "text"), modality="text")
    assert "serving_default" in capsys.readouterr().out  # verbose by default, as Keras
    signature, inputs, outputs = _serving_default(str(tmp_path / "text"))
    assert inputs == {"bow": ("float32", (None, 30))}
    assert outputs == {"codes": ("float32", (None, 16)), "binary_codes": ("uint8", (None, 2))}
    bow = (np.random.default_rng(0).random((5, 30)) > 0.7).astype("float32")
    np.testing.assert_array_equal(signature(bow=tf.constant(bow))["binary_codes"].numpy(),
                                  ssah.text_encoder.encode(bow))

    # A harness exports its encoder, never itself.
    bgan = CONSTRUCTORS["BGAN"]()
    bgan.export(str(tmp_path / "bgan"), verbose=False)
    _, inputs, _ = _serving_default(str(tmp_path / "bgan"))
    assert inputs == {"images": ("uint8", (None, 8, 8, 1))}
    with pytest.raises(ValueError, match=r"modality must be one of \['image'\]"):
        bgan.export(str(tmp_path / "x"), modality="text")


def test_export_litert_writes_the_same_signature(digits_data, tmp_path):
    model = _tiny_dhn()
    path = str(tmp_path / "dhn.tflite")
    model.export(path, format="litert", verbose=False)
    encoder = TFLiteEncoder(path)
    assert (encoder.input_name, encoder.input_shape, encoder.bits) == ("images", (8, 8, 1), 16)
    digits = digits_data.images[:32]
    np.testing.assert_allclose(encoder.encode_real(digits), model.encode_real(digits), atol=1e-4)


def test_export_refuses_what_it_cannot_honour(tmp_path):
    model = _tiny_dhn()
    with pytest.raises(ValueError, match=r"format must be 'tf_saved_model' or 'litert'.*Received: format='torch'"):
        model.export(str(tmp_path / "m"), format="torch")
    with pytest.raises(ValueError, match=r"input_signature is not taken"):
        model.export(str(tmp_path / "m"), input_signature=[tf.TensorSpec((None, 8, 8, 1), tf.float32)])
    with pytest.raises(ValueError, match=r"takes \['num_calibration', 'quantization', 'representative_inputs'\]"):
        model.export(str(tmp_path / "m.tflite"), format="litert", optimizations=[tf.lite.Optimize.DEFAULT])
    assert not os.path.exists(tmp_path / "m") and not os.path.exists(tmp_path / "m.tflite")
