"""What every tfhash model shares: encoding to packed codes, input checks,
and the cross-replica gather that makes pairwise losses strategy-independent."""

import contextlib

import keras
import numpy as np
import scipy.sparse
import tensorflow as tf

from tfhash.layers import SignPack, check_bits
from tfhash.models.backbones import SMALL_CNN, Backbone


def gather_across_replicas(*tensors):
    """All replicas' rows of each tensor (the tensors themselves on one device).

    Pairwise losses pair each local row with the whole global batch, so a
    MirroredStrategy step computes the same loss as one device does.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensors
    # Gather floats only: integer gathers fail under MultiWorkerMirroredStrategy
    # ("destinations can not be empty"). Class ids below 2**24 are exact in float32.
    tensors = [t if t.dtype.is_floating else tf.cast(t, "float32") for t in tensors]
    return tuple(context.all_gather(t, axis=0) for t in tensors)


@contextlib.contextmanager
def with_grappler_options(options):
    """Grappler's graph-rewrite switches (`tf.config.optimizer.set_experimental_options`)
    for the block's `tf.function` calls, then the previous ones back.

    TensorFlow reads them at each call, so a function traced before the block
    runs with them inside it. They are process-wide: the block is not thread-safe.
    """
    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options(options)
    try:
        yield
    finally:
        # An option not set before reverts to Grappler's default, on (set_experimental_options cannot unset).
        tf.config.optimizer.set_experimental_options({key: before.get(key, True) for key in options})


def step_logs(model, metrics=None):
    """Tracker results (default: all of `model.metrics`), as a `train_step` returns them."""
    logs = {m.name: m.result() for m in (model.metrics if metrics is None else metrics)}
    if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Keras reduces step logs with reduce("MEAN", axis=0) across
        # workers, which fails on scalars: give them a length-1 axis.
        logs = {name: tf.reshape(value, (1,)) for name, value in logs.items()}
    return logs


def record_losses(model, **per_example):
    """Updates the trackers of `model.metrics` named like the keys; returns their step logs.

    Each value is a vector of per-example losses, or a `(losses, weights)`
    pair for a loss that only some rows have (weights 0 elsewhere). Each
    tracker gets the local (weighted) mean with the local weight total, so the
    synced Mean is the global mean under any strategy. Trackers not named
    (another phase's, in a model that alternates) are left alone; but then
    Keras reports the replicas' local means averaged, not the synced means,
    which is exact only for unweighted losses on equal shares: a weighted
    loss that is sometimes off should be recorded as zeros instead.
    """
    trackers = [tracker for tracker in model.metrics if tracker.name in per_example]
    unknown = set(per_example) - {tracker.name for tracker in trackers}
    if unknown:
        raise ValueError(f"No loss tracker named {sorted(unknown)} in {[m.name for m in model.metrics]}")
    for tracker in trackers:
        value = per_example[tracker.name]
        if isinstance(value, tuple):
            tracker.update_state(value[0], sample_weight=value[1])
        else:
            n = tf.cast(tf.shape(value)[0], "float32")
            tracker.update_state(tf.reduce_mean(value), sample_weight=n)
    return step_logs(model, trackers)


def build_for_fit(model, optimizers):
    """Builds a model and its optimizers before `fit`, inside the strategy's scope.

    Replaces Keras's `_maybe_symbolic_build`, which reduces a whole data batch
    across workers only to learn input shapes and fails under
    MultiWorkerMirroredStrategy (keras-team/keras#20585). Optimizers are built
    after the weights exist, as MirroredStrategy needs.

    Args:
        model: a model whose `build()` needs no input shape.
        optimizers: a function returning (optimizer, variables) pairs, called
            once the model is built (before that its variables are not all there).
    """
    with model.distribute_strategy.scope():
        if not model.built:
            model.build()
        for optimizer, variables in optimizers():
            if optimizer is not None and not optimizer.built:
                optimizer.build(variables)


def check_images(images, input_shape, name="images"):
    """Validates a batch of raw images; returns it as a NumPy array."""
    array = np.asarray(images)
    expected = (None, *input_shape)
    if array.ndim != len(expected) or tuple(array.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"{name} must have shape {expected}. Received: shape={array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(
            f"{name} must be a numeric array (uint8 or float pixels on a 0-255 scale). "
            f"Received: dtype={array.dtype}"
        )
    if len(array) == 0:
        raise ValueError(f"{name} is empty: expected at least one image. Received: shape={array.shape}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
        raise ValueError(
            f"{name} must be finite. Received NaN or inf in {len(bad)} image(s), "
            f"first at index {bad[:5].tolist()}"
        )
    return array


def check_matrix(x, name, columns=None, row="item", unit="features", why=""):
    """Validates a 2-D array of real numbers, one `row` per row: features for the
    baselines, bags of words for text encoders. Sparse matrices are densified
    and booleans become float32; returns the array.

    Args:
        columns: the required number of columns, or None for any.
        unit: what a column holds, for the messages ("features", "words").
        why: where `columns` comes from, appended to its message.
    """
    if scipy.sparse.issparse(x):
        x = x.toarray()
    x = np.asarray(x)
    expected = f"(n, {columns if columns is not None else 'd'})"
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape {expected}, one {row} per row. Received: shape={x.shape}")
    if x.dtype == np.bool_:
        x = x.astype(np.float32)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{name} must hold real numbers. Received: dtype={x.dtype}, shape={x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one row and one column. Received: shape={x.shape}")
    if columns is not None and x.shape[1] != columns:
        raise ValueError(f"{name} must have {columns} {unit} per row{why}. Received: shape={x.shape}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ValueError(f"{name} must be finite. Received NaN or inf in {len(bad)} row(s), first at index {bad[:5].tolist()}")
    return x


def check_bow(bow, vocabulary_size, name="bow"):
    """Validates a batch of bag-of-words vectors; returns it as float32."""
    array = check_matrix(bow, name, vocabulary_size, row="text", unit="words", why=" (the model's vocabulary)")
    return array.astype(np.float32)


class HashModel(keras.Model):
    """Base class of hashing encoders: `call` gives relaxed codes z in
    [-1, 1]^bits; `encode` gives packed binary codes, `np.packbits(z >= 0)`.

    Image encoders take raw images; encoders of other inputs (text) override
    `serving_inputs` and `check_inputs`."""

    bits: int
    image_shape: tuple

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None or self._compile_metrics or self._compile_loss:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        build_for_fit(self, lambda: [(self.optimizer, self.trainable_variables)])

    @classmethod
    def from_preset(cls, name):
        """A pretrained encoder from the zoo (`tfhash.zoo.load`), checked to be a `cls`.

        `HashModel.from_preset(name)` accepts any entry; `DHN.from_preset(name)` only DHN ones.
        """
        from tfhash import zoo

        model = zoo.load(name)
        if not isinstance(model, cls):
            raise ValueError(f"Zoo entry {name!r} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    def serving_inputs(self):
        """Named inputs of the exported encoder: raw uint8 images, batch free.

        Export and serving are written against this, so models with other
        inputs (text encoders) override it.
        """
        return {"images": tf.TensorSpec((None, *self.image_shape), tf.uint8, name="images")}

    def step_logs(self):
        return step_logs(self)

    def check_inputs(self, inputs, name="images"):
        """Validates a batch of the model's inputs (raw images here); returns an array."""
        return check_images(inputs, self.image_shape, name)

    def encode(self, inputs, batch_size=256, verbose=0):
        """Packed uint8 codes (n, bits // 8) for a batch of inputs (raw images, 0-255 scale)."""
        z = self.predict(self.check_inputs(inputs), batch_size=batch_size, verbose=verbose)
        return SignPack()(z).numpy()

    def encode_real(self, inputs, batch_size=256, verbose=0):
        """Relaxed codes z (n, bits), float32, before the sign."""
        return self.predict(self.check_inputs(inputs), batch_size=batch_size, verbose=verbose)


class ImageHashModel(HashModel):
    """Base of image encoders on a `Backbone` trunk: the code length, the raw
    image shape and the trunk, built and configured once for every method.

    Args:
        bits: code length K (multiple of 8).
        input_shape: raw image shape (height, width, channels), pixels 0-255.
        backbone: "small_cnn" or a `keras.applications` model name.
        backbone_weights: None, a local weights file, or "imagenet" (network).
        dropout: dropout rate inside the small CNN.
    """

    def __init__(self, bits=32, input_shape=(28, 28, 1), backbone=SMALL_CNN, backbone_weights=None, dropout=0.0,
                 **kwargs):
        super().__init__(**kwargs)
        check_bits(bits)
        self.bits = bits
        self.image_shape = tuple(int(d) for d in input_shape)
        self.backbone_name = backbone
        self.dropout = float(dropout)
        self.backbone = Backbone(backbone, self.image_shape, backbone_weights, dropout, name="backbone")

    def build(self, input_shape=None):
        """Builds the trunk; subclasses then build their heads on `feature_shape`."""
        if not self.backbone.built:
            self.backbone.build((None, *self.image_shape))
        self.built = True

    @property
    def feature_shape(self):
        """The trunk's output shape, (None, width)."""
        return self.backbone.compute_output_shape((None, *self.image_shape))

    def get_config(self):
        return {
            **super().get_config(),
            "bits": self.bits,
            "input_shape": self.image_shape,
            "backbone": self.backbone_name,
            # Weights are restored from the saved model, not the source file.
            "backbone_weights": None,
            "dropout": self.dropout,
        }


class BowEncoder(HashModel):
    """Base of text encoders: their input is `bow`, float32 (None, V), a
    bag-of-words vector over the `vocabulary_size` words they were trained with."""

    vocabulary_size: int

    def serving_inputs(self):
        return {"bow": tf.TensorSpec((None, self.vocabulary_size), tf.float32, name="bow")}

    def check_inputs(self, bow, name="bow"):
        return check_bow(bow, self.vocabulary_size, name)


class EncoderHarness(keras.Model):
    """Base of the GAN training harnesses (BGAN, DSH-GAN): an exported `encoder`
    (a `HashModel`) plus the networks and optimizers that train it.

    `call`, `bits` and `image_shape` are the encoder's; `metrics` are one Mean
    tracker per name in `loss_names`, which `record_losses` updates.
    """

    loss_names = ()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names}

    @property
    def bits(self):
        return self.encoder.bits

    @property
    def image_shape(self):
        return self.encoder.image_shape

    def call(self, images, training=False):
        return self.encoder(images, training=training)

    @property
    def metrics(self):
        return list(self.trackers.values())
