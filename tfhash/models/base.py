"""What every tfhash model shares: encoding to packed codes, input checks,
and the cross-replica gather that makes pairwise losses strategy-independent."""

import contextlib
import dataclasses
import inspect
import os
import warnings

import keras
import tensorflow as tf

from tfhash.checks import check_bits, check_bow, check_images, check_matrix  # noqa: F401  (check_matrix: re-exported)
from tfhash.layers import SignPack
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
            n = tf.cast(tf.shape(value)[0], value.dtype)
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


def finish_construction(model, cls):
    """Ends `cls.__init__`: builds `model`, so a model is usable as soon as it
    is made (`summary`, `count_params`, `save`, `BackupAndRestore`), before any data.

    Skipped while a subclass's own `__init__` still runs: a subclass that
    overrides `__init__` calls it last, with its own class. Initial weights
    are those of building later: initializers draw their seeds when layers
    are made, not when weights are.
    An encoder (`HashModel`) is built for its serving inputs and called once
    on symbolic ones, so it has `input`/`output` (and `inputs`/`outputs`) as
    a functional model does.
    """
    if type(model).__init__ is not cls.__init__:
        return
    if isinstance(model, HashModel):
        [(name, spec)] = model.serving_inputs().items()
        model.build(tuple(spec.shape))
        model(keras.Input(batch_shape=tuple(spec.shape), dtype=spec.dtype.name, name=name))
    else:
        model.build()


class HashModel(keras.Model):
    """Base class of hashing encoders: `call` gives relaxed codes z in
    [-1, 1]^bits; `encode` gives packed binary codes, `np.packbits(z >= 0)`.

    Image encoders take raw images; encoders of other inputs (text) override
    `serving_inputs` and `check_inputs`.

    Encoders are built when made (`finish_construction`), and keep Keras's
    habits: `inputs`/`outputs` are the serving input (e.g. uint8 `images`)
    and the relaxed codes; `export` writes the `serving_default` signature
    `tfhash export` writes (`tfhash.export`)."""

    bits: int
    image_shape: tuple

    # What a client must feed `serving_inputs`, for the zoo's input contract.
    preprocessing = "raw pixels on a 0-255 scale; the model does its own preprocessing"

    @classmethod
    def from_preset(cls, preset, *, modality="image", **overrides):
        """A trained encoder from a zoo entry name, a `.keras` file or a folder
        (a run directory), checked to be a `cls` (`tfhash.models.presets`).

        `HashModel.from_preset(name)` accepts any encoder; `DHN.from_preset(name)` only DHN ones.
        `overrides` replace config keys, the weights being kept.
        """
        from tfhash.models.presets import load_preset

        return load_preset(preset, expected=(lambda m: isinstance(m, cls), f"a {cls.__name__}"), modality=modality,
                           **overrides)

    @property
    def inputs(self):
        """[the symbolic serving input], as a functional model's `inputs`
        (from the symbolic call made at construction)."""
        return [self.input]

    @property
    def outputs(self):
        """[the symbolic relaxed codes (None, bits)], as a functional model's `outputs`."""
        return [self.output]

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs):
        """Exports the encoder for inference, as `tfhash export` does.

        - "tf_saved_model": a SavedModel at `filepath` with TF Serving's
          `serving_default` signature: the `serving_inputs()` (uint8 `images`,
          or float32 `bow`) in, float32 `codes` and uint8 `binary_codes` out
          (`tfhash.export.write_savedmodel`; `export_savedmodel` adds TF
          Serving's NAME/VERSION layout).
        - "litert": a TFLite file with the same signature
          (`tfhash.export.export_tflite`); `kwargs` are its `quantization`,
          `representative_inputs` and `num_calibration`.
        - "onnx", "openvino": Keras's own export of `call` (relaxed codes only),
          for the `serving_inputs()` unless `input_signature` is given.

        Args:
            filepath: the SavedModel folder or the file to write.
            format: one of the above.
            verbose: print what was written (default True, as Keras).
            input_signature: only for "onnx" and "openvino"; the others take
                the encoder's `serving_inputs()`.
        """
        from tfhash import export as exporting

        if format in ("tf_saved_model", "litert"):
            if input_signature is not None:
                raise ValueError(
                    f"format={format!r} writes the serving signature for the encoder's own inputs "
                    f"({_describe_specs(self.serving_inputs())}): input_signature is not taken. "
                    f"Received: input_signature={input_signature!r}"
                )
            if format == "tf_saved_model":
                if kwargs:
                    raise ValueError(f"format='tf_saved_model' takes no other options. Received: {sorted(kwargs)}")
                path = exporting.write_savedmodel(self, filepath)
            else:
                allowed = {"quantization", "representative_inputs", "num_calibration"}
                if set(kwargs) - allowed:
                    raise ValueError(
                        f"format='litert' writes through tfhash.export.export_tflite, which takes "
                        f"{sorted(allowed)}. Received: {sorted(set(kwargs) - allowed)}"
                    )
                path = exporting.export_tflite(self, filepath, **kwargs)
            if verbose is None or verbose:
                print(f"Saved {format} artifact at {path} (signature {exporting.SIGNATURE!r}: "
                      f"{_describe_specs(self.serving_inputs())} -> codes float32 (None, {self.bits}), "
                      f"binary_codes uint8 (None, {self.bits // 8}))")
            return
        if format in ("onnx", "openvino"):
            if input_signature is None:
                input_signature = list(self.serving_inputs().values())
            return super().export(filepath, format=format, verbose=verbose, input_signature=input_signature,
                                  **kwargs)
        raise ValueError(
            f"format must be 'tf_saved_model' or 'litert' (tfhash's serving signature), or 'onnx' or "
            f"'openvino' (Keras's export of the relaxed codes). Received: format={format!r}"
        )

    def serving_inputs(self):
        """Named inputs of the exported encoder: raw uint8 images, batch free.

        Export and serving are written against this, so models with other
        inputs (text encoders) override it.
        """
        return {"images": tf.TensorSpec((None, *self.image_shape), tf.uint8, name="images")}

    def check_inputs(self, inputs, name="images"):
        """Validates a batch of the model's inputs (raw images here); returns an array."""
        return check_images(inputs, self.image_shape, name)

    def encode(self, inputs, batch_size=256, verbose=0):
        """Packed uint8 codes (n, bits // 8) of what `predict` takes: an array of
        raw inputs (images on the 0-255 scale), a `tf.data.Dataset` (of inputs,
        or of (inputs, labels, ...) tuples as `keras.utils.image_dataset_from_directory`
        gives: the first element is encoded), a `keras.utils.PyDataset` or a
        generator of batches."""
        return SignPack()(self.encode_real(inputs, batch_size, verbose)).numpy()

    def encode_real(self, inputs, batch_size=256, verbose=0):
        """Relaxed codes z (n, bits), float32, before the sign; inputs as `encode`."""
        with warnings.catch_warnings():
            # A generator's end is how Keras learns its length: not worth a warning.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            return self.predict(self.prediction_inputs(inputs), batch_size=batch_size, verbose=verbose)

    def prediction_inputs(self, inputs):
        """`inputs` as `predict` takes them: an array is checked (`check_inputs`);
        a dataset's element shape is checked against the serving input's; a
        `PyDataset` or a generator passes (Keras checks its batches)."""
        if isinstance(inputs, tf.data.Dataset):
            spec = inputs.element_spec
            spec = spec[0] if isinstance(spec, tuple) else spec
            (expected,) = self.serving_inputs().values()
            if not isinstance(spec, tf.TensorSpec) or not spec.shape[1:].is_compatible_with(expected.shape[1:]):
                raise ValueError(f"Expected a dataset of batches {tuple(expected.shape)} (or of tuples whose first "
                                 f"element is one) for this {type(self).__name__}. Received: element_spec={spec}")
            return inputs
        if isinstance(inputs, keras.utils.PyDataset):
            return inputs
        if inspect.isgenerator(inputs):  # Keras takes a generator of tuples: (batch,) for a bare batch
            return (batch if isinstance(batch, tuple) else (batch,) for batch in inputs)
        return self.check_inputs(inputs)


def _describe_specs(specs):
    return ", ".join(f"{name} {spec.dtype.name} {tuple(spec.shape)}" for name, spec in specs.items())


class ImageArguments:
    """The arguments of every image encoder and image trainer, declared once:
    the code length, the raw image shape and the trunk (`Backbone`).

    `ImageHashModel` and the trainers that make one (`EncoderHarness`, `SSAH`)
    have it in their MRO and take these by keyword through `**kwargs`, so
    walking the MRO's `__init__` signatures (`init_parameters`, the
    registry's settings) finds them here. They are kept, as given, in
    `self.image_arguments` (a trainer passes them on to its encoder).

    Args:
        bits: code length K (multiple of 8).
        input_shape: raw image shape (height, width, channels), pixels 0-255.
        backbone: "small_cnn", a `keras.applications` model name or
            "EfficientNetLite0" / "1" / "2" (ImageNet weights offline).
        backbone_weights: None, a local weights file, or "imagenet".
        dropout: dropout rate inside the small CNN.
        backbone_input_size: the side a named trunk sees (images resized in
            the graph; default their own size, at least 32).
        freeze_backbone: keep the trunk fixed (its batch norm in inference mode).
    """

    def __init__(self, bits=32, input_shape=(28, 28, 1), backbone=SMALL_CNN, backbone_weights=None, dropout=0.0,
                 backbone_input_size=None, freeze_backbone=False, **kwargs):
        super().__init__(**kwargs)
        check_bits(bits)
        self.image_arguments = dict(bits=bits, input_shape=input_shape, backbone=backbone,
                                    backbone_weights=backbone_weights, dropout=dropout,
                                    backbone_input_size=backbone_input_size, freeze_backbone=freeze_backbone)


# The trunk's constructor arguments (`ImageArguments` less bits and input_shape).
TRUNK_ARGUMENTS = ("backbone", "backbone_weights", "dropout", "backbone_input_size", "freeze_backbone")


def init_parameters(cls, last=None):
    """{name: inspect.Parameter} of the constructor arguments `cls` takes: its own
    `__init__`'s, then, through its `**kwargs`, those of the next class of its
    MRO that defines `__init__`, and so on; first declaration wins.

    Stops at a class without `**kwargs`, at Keras's own classes, or after `last`.
    """
    parameters = {}
    for klass in cls.__mro__:
        if klass is object or klass.__module__.split(".")[0] == "keras":
            break
        if "__init__" in vars(klass):
            own = list(inspect.signature(klass.__init__).parameters.values())[1:]
            for p in own:
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                    parameters.setdefault(p.name, p)
            if not any(p.kind == p.VAR_KEYWORD for p in own):
                break
        if klass is last:
            break
    return parameters


class ImageHashModel(ImageArguments, HashModel):
    """Base of image encoders on a `Backbone` trunk: the code length, the raw
    image shape and the trunk, built and configured once for every method.

    Takes `ImageArguments` (bits, input_shape and the trunk's five) by keyword.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        given = self.image_arguments
        self.bits = given["bits"]
        self.image_shape = tuple(int(d) for d in given["input_shape"])
        self.backbone_name = given["backbone"]
        self.dropout = float(given["dropout"])
        self.backbone = Backbone(self.backbone_name, self.image_shape, given["backbone_weights"], self.dropout,
                                 input_size=given["backbone_input_size"], frozen=given["freeze_backbone"],
                                 name="backbone")

    def build(self, input_shape=None):
        """Builds the trunk; subclasses then build their heads on `feature_shape`
        (each returning first when built: models are built when made)."""
        if self.built:
            return
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
            "backbone_input_size": self.backbone.input_size,
            "freeze_backbone": self.backbone.frozen,
        }

    @classmethod
    def from_config(cls, config):
        # Weights come from the archive being loaded, never from a path or URL in its config.
        return super().from_config({**config, "backbone_weights": None})

    def trunk_arguments(self):
        """The trunk's constructor arguments, for a harness's config (weights: the saved model's)."""
        config = self.get_config()
        return {key: config[key] for key in TRUNK_ARGUMENTS}


class BowEncoder(HashModel):
    """Base of text encoders: their input is `bow`, float32 (None, V), a
    bag-of-words vector over the `vocabulary_size` words they were trained with."""

    vocabulary_size: int

    preprocessing = "bag-of-words vector over the training vocabulary (tfhash.data protocol order)"

    def serving_inputs(self):
        return {"bow": tf.TensorSpec((None, self.vocabulary_size), tf.float32, name="bow")}

    def check_inputs(self, bow, name="bow"):
        return check_bow(bow, self.vocabulary_size, name)


def replica_share(draw, rows):
    """This replica's `rows` of `draw(global_rows)`, a stateless random draw made
    for the global batch: every replica makes the same draw and keeps its own
    rows, so N replicas pair each row with the randomness one device uses."""
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    replica = context.replica_id_in_sync_group if context is not None else 0
    start = tf.cast(replica, "int32") * rows
    return tf.nest.map_structure(lambda t: t[start : start + rows], draw(rows * replicas))


@dataclasses.dataclass
class TrainingPlan:
    """What a method's `training_plan` returns (see `tfhash.registry`): a compiled
    trainer, the batches its `fit` takes, the epochs and its own callbacks."""

    model: object
    batches: object
    epochs: int
    callbacks: list = dataclasses.field(default_factory=list)


class Trainer(keras.Model):
    """Base of every tfhash training model, in the keras-io GAN style.

    - `loss_names`: one `Mean` tracker each, made here and listed by `metrics`,
      so `fit` resets them every epoch; `record_losses` updates them.
    - `optimizer_roles`: compile's optimizer arguments and their defaults,
      e.g. {"optimizer": "adam", "d_optimizer": "adam"}; `compile` keeps each
      as an attribute of that name, and `optimizer_variables` says what each trains.
    - The model is built when made (each subclass's `__init__` ends with
      `finish_construction`); its optimizers inside the strategy's scope
      before `fit` (`build_for_fit`), once for every subclass.
    - `encoders()`: what is exported, by modality ("image", "text"); a method,
      not a property, so Keras's saving walk does not follow it back to the model.

    The losses are the model's own: `compile` refuses `loss` and `metrics`.
    """

    loss_names = ("loss",)
    optimizer_roles = {"optimizer": "adam"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def encoders(self):
        """{"image": encoder} (and "text" for image-text methods): the exported `HashModel`s."""
        return {"image": self.encoder}

    def encode(self, inputs, *args, **kwargs):
        """The image encoder's `HashModel.encode` (packed uint8 codes), so every
        trainer `fit` trains encodes: `BGAN(...).encode(images)` is
        `bgan.encoders()["image"].encode(images)`."""
        return self._image_encoder_method("encode")(inputs, *args, **kwargs)

    def encode_real(self, inputs, *args, **kwargs):
        """The image encoder's `HashModel.encode_real` (relaxed codes, float32)."""
        return self._image_encoder_method("encode_real")(inputs, *args, **kwargs)

    def _image_encoder_method(self, name):
        encoder = self.encoders()["image"]
        # A trainer that is its own encoder (DHN) takes HashModel's, which this one hides.
        return getattr(encoder, name) if encoder is not self else getattr(super(Trainer, self), name)

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, modality="image",
               **kwargs):
        """Exports the encoder of `modality` (`encoders()`), as `tfhash export --modality`
        does: see `HashModel.export`. The training harness is never exported."""
        encoders = self.encoders()
        if modality not in encoders:
            raise ValueError(f"modality must be one of {sorted(encoders)} for {type(self).__name__}. "
                             f"Received: modality={modality!r}")
        # A trainer that is its own encoder (DHN) takes HashModel's export, which this one hides.
        export = encoders[modality].export if encoders[modality] is not self else super(Trainer, self).export
        return export(filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs)

    @classmethod
    def from_preset(cls, preset, *, modality="image", **overrides):
        """A trained encoder of this method (what the zoo holds: `BGAN.from_preset`
        gives a `BGANEncoder`) from a zoo entry name, a `.keras` file or a folder
        (`tfhash.models.presets`); `modality` picks an image-text method's encoder."""
        from tfhash.models.presets import load_preset

        # A method's encoders are defined beside it, in its module.
        return load_preset(preset, expected=(lambda m: type(m).__module__ == cls.__module__,
                                             f"an encoder of {cls.__name__}"), modality=modality, **overrides)

    def compile(self, **kwargs):
        """Takes one optimizer per role in `optimizer_roles` (a name, an
        instance, or None for the role's default) and Keras's other options."""
        given = [name for name in ("loss", "metrics", "loss_weights", "weighted_metrics") if kwargs.get(name)]
        if given:
            raise ValueError(
                f"{type(self).__name__} computes its own losses; compile takes optimizers only "
                f"({sorted(self.optimizer_roles)}). Received: {given}"
            )
        optimizers = {}
        for role, default in self.optimizer_roles.items():
            optimizer = kwargs.pop(role, None)
            optimizer = default() if optimizer is None and callable(default) else optimizer or default
            optimizers[role] = keras.optimizers.get(optimizer)
        super().compile(optimizer=optimizers.pop("optimizer"), **kwargs)
        for role, optimizer in optimizers.items():
            setattr(self, role, optimizer)

    def get_compile_config(self):
        # The roles' optimizers are not saved: a loaded model encodes, and is
        # compiled again to train further (Keras warns on a custom compile otherwise).
        return None

    def optimizer_variables(self):
        """(optimizer, variables) per role; by default `optimizer` trains all."""
        return [(self.optimizer, self.trainable_variables)]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        build_for_fit(self, self.optimizer_variables)

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`; `$TFHASH_MAX_EPOCHS` (e.g. 1) caps the epochs of
        every tfhash trainer (given as `epochs=`), saying so, so the README's
        examples and the CLI run in seconds in tests (tests/test_readme.py)."""
        cap = os.environ.get(MAX_EPOCHS_ENV)
        if cap:
            if not cap.isdigit() or int(cap) < 1:
                raise ValueError(f"{MAX_EPOCHS_ENV} must be a positive int. Received: {cap!r}")
            epochs = kwargs.get("epochs", 1)
            if epochs > int(cap):
                print(f"{MAX_EPOCHS_ENV}={cap}: training {cap} of {epochs} epochs")
                kwargs["epochs"] = int(cap)
        return super().fit(*args, **kwargs)


# Caps every trainer's epochs when set (see `Trainer.fit`).
MAX_EPOCHS_ENV = "TFHASH_MAX_EPOCHS"


class EncoderHarness(ImageArguments, Trainer):
    """Base of the GAN training harnesses (BGAN, DSH-GAN): an exported `encoder`
    (an image `HashModel`) plus the networks and optimizers that train it;
    `call`, `bits` and `image_shape` are the encoder's. It takes
    `ImageArguments` by keyword and keeps them for its encoder
    (`self.image_arguments`)."""

    @property
    def bits(self):
        return self.encoder.bits

    @property
    def image_shape(self):
        return self.encoder.image_shape

    def call(self, images, training=False):
        return self.encoder(images, training=training)
