"""Image trunks: a small CNN by default, or any `keras.applications` model.

Every trunk takes raw pixels on a 0-255 scale (uint8 or float) and does its
own preprocessing, so exported encoders accept raw images.
"""

import inspect

import keras
import numpy as np
from keras import ops

from tfhash.models import efficientnet_lite

SMALL_CNN = "small_cnn"


@keras.saving.register_keras_serializable(package="tfhash")
class Backbone(keras.layers.Layer):
    """Feature extractor: raw images -> feature vector.

    Args:
        name_or_trunk: "small_cnn", the name of a `keras.applications`
            constructor such as "MobileNetV2" or "ResNet50", or
            "EfficientNetLite0"/"EfficientNetLite1"/"EfficientNetLite2"
            (`tfhash.models.efficientnet_lite`).
        input_shape: (height, width, channels) of the raw images.
        weights: None (random init), a local weights file path, or "imagenet"
            for `keras.applications` trunks on a machine with network, and
            offline for the EfficientNetLite trunks (`tfhash[pretrained]`).
        dropout: dropout rate before the trunk's output (small CNN only).
        trunk_kwargs: extra keyword arguments for the `keras.applications`
            constructor (e.g. `{"alpha": 0.35}`).
        input_size: the side of the square images a named trunk sees: raw
            images are resized to it inside the graph (default: their own
            size, at least 32). Pretrained trunks see more at their training
            size (224 for EfficientNetLite0), at a cost in time.
        frozen: keep the trunk's weights (and batch-norm statistics) fixed,
            training only what sits on it. A frozen trunk also takes its own
            features (rank 2, e.g. from `pretrained_features`) and passes them
            through, so training can compute them once (`trunk_inputs`) while
            the saved encoder still takes images.

    Examples:
    >>> Backbone("small_cnn", input_shape=(28, 28, 1))(np.zeros((2, 28, 28, 1))).shape
    (2, 256)
    """

    def __init__(
        self,
        name_or_trunk=SMALL_CNN,
        input_shape=(28, 28, 1),
        weights=None,
        dropout=0.0,
        trunk_kwargs=None,
        input_size=None,
        frozen=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.name_or_trunk = name_or_trunk
        self.image_shape = tuple(int(d) for d in input_shape)
        self.weights_source = weights
        self.dropout = float(dropout)
        self.trunk_kwargs = dict(trunk_kwargs or {})
        self.input_size = None if input_size is None else int(input_size)
        self.frozen = bool(frozen)
        if len(self.image_shape) != 3:
            raise ValueError(
                f"input_shape must be (height, width, channels). Received: input_shape={input_shape}"
            )
        if name_or_trunk == SMALL_CNN:
            if self.input_size is not None:
                raise ValueError(f"input_size resizes images for a named trunk; the small CNN reads them as they "
                                 f"are. Received: input_size={input_size}")
            self.trunk = _small_cnn(self.image_shape, self.dropout)
            self._preprocess = lambda x: x / 255.0
            if weights is not None:
                self.trunk.load_weights(weights)
        else:
            self.trunk, self._preprocess = _application(
                name_or_trunk, self.image_shape, weights, self.trunk_kwargs, self.input_size
            )
        self.trunk.trainable = not self.frozen

    def build(self, input_shape):
        self.trunk.build((None, *self.trunk_input_shape))

    @property
    def trunk_input_shape(self):
        return tuple(self.trunk.input_shape[1:])

    def call(self, images, training=False):
        if self.frozen and len(images.shape) == 2:
            return ops.cast(images, self.compute_dtype)  # features computed once by `trunk_inputs`
        x = self._preprocess(ops.cast(images, self.compute_dtype))
        # A frozen trunk runs in inference mode: its batch norm keeps its statistics.
        return self.trunk(x, training=training and not self.frozen)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.trunk.output_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "name_or_trunk": self.name_or_trunk,
            "input_shape": self.image_shape,
            # Weights are restored from the saved model, not the source file.
            "weights": None,
            "dropout": self.dropout,
            "trunk_kwargs": self.trunk_kwargs,
            "input_size": self.input_size,
            "frozen": self.frozen,
        }

    @classmethod
    def from_config(cls, config):
        # A loaded model's weights come from its archive: a path or "imagenet" in
        # a (possibly crafted) config is never opened or downloaded.
        return super().from_config({**config, "weights": None})


@keras.saving.register_keras_serializable(package="tfhash")
class PixelPCA(keras.layers.Layer):
    """Raw images -> their top principal components: a fixed, label-free feature space.

    UGACH's networks read fixed image features (VGG19 fc7 in the paper). With
    no pretrained weights offline, the principal components of the pixels
    (0-1 scale) stand in, as for BGAN's neighbour graph. `adapt(images)` fits
    them; the mean and components are non-trainable weights, so they are saved
    and exported with the model, which then still takes raw images.

    Args:
        dims: number of components kept.
        input_shape: (height, width, channels) of the raw images.
        seed: seed of the randomized SVD.
    """

    def __init__(self, dims=512, input_shape=(28, 28, 1), seed=0, **kwargs):
        super().__init__(**kwargs)
        self.dims = int(dims)
        self.image_shape = tuple(int(d) for d in input_shape)
        self.seed = int(seed)
        self.pixels = int(np.prod(self.image_shape))
        if not 1 <= self.dims <= self.pixels:
            raise ValueError(f"dims must be in [1, {self.pixels}] for images of shape {self.image_shape}. "
                             f"Received: dims={dims}")

    def build(self, input_shape=None):
        self.mean = self.add_weight(shape=(self.pixels,), initializer="zeros", trainable=False, name="mean")
        self.components = self.add_weight(
            shape=(self.pixels, self.dims), initializer="zeros", trainable=False, name="components"
        )

    @property
    def adapted(self):
        """Whether `adapt` has run (or adapted weights were loaded): components are non-zero."""
        return self.built and bool(np.any(keras.ops.convert_to_numpy(self.components)))

    def adapt(self, images):
        """Fits the components on raw images (n, height, width, channels), n >= dims."""
        from sklearn.decomposition import PCA

        flat = np.asarray(images).reshape(len(images), -1)
        if flat.shape[1] != self.pixels or len(flat) < self.dims:
            raise ValueError(
                f"adapt needs at least {self.dims} images of shape {self.image_shape}. "
                f"Received: shape={np.shape(images)}"
            )
        if not self.built:
            self.build()
        pca = PCA(self.dims, svd_solver="randomized", random_state=self.seed).fit(flat.astype(np.float32) / 255.0)
        self.mean.assign(pca.mean_.astype(self.variable_dtype))
        self.components.assign(pca.components_.T.astype(self.variable_dtype))
        return self

    def call(self, images):
        x = ops.reshape(ops.cast(images, self.compute_dtype) / 255.0, (-1, self.pixels))
        return ops.matmul(x - self.mean, self.components)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dims)

    def get_config(self):
        return {**super().get_config(), "dims": self.dims, "input_shape": self.image_shape, "seed": self.seed}


def _small_cnn(input_shape, dropout):
    """Two conv blocks, a dense layer and a batch norm over the features."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dropout(dropout),
            layers.Dense(256, activation="relu"),
            # Random ReLU features of different images are nearly parallel, so all
            # codes start alike and the pairwise loss collapses them to z = 0 (a
            # stationary point). Centring the features breaks that. Synchronized:
            # statistics over the global batch, so replicas match one device.
            layers.BatchNormalization(synchronized=True),
        ],
        name="small_cnn",
    )


def image_generator(input_dim, image_shape, filters=(64, 32), batch_norm=False, name="generator"):
    """Vector -> image on a 0-1 scale: a dense layer and two stride-2 transposed
    convolutions (the GAN models' generators).

    `batch_norm` puts DCGAN's batch norm after each hidden layer; it is
    synchronized, so replicas of a distribution strategy compute what one
    device does.
    """
    layers = keras.layers
    height, width, channels = image_shape
    if height % 4 or width % 4:
        raise ValueError(f"The generator needs height and width divisible by 4. Received: {tuple(image_shape)}")

    def hidden(layer):
        if not batch_norm:
            return [layer]
        layer.activation = keras.activations.get("linear")
        return [layer, layers.BatchNormalization(synchronized=True), layers.ReLU()]

    return keras.Sequential(
        [
            keras.Input((input_dim,)),
            *hidden(layers.Dense((height // 4) * (width // 4) * filters[0], activation="relu")),
            layers.Reshape((height // 4, width // 4, filters[0])),
            *hidden(layers.Conv2DTranspose(filters[1], 4, strides=2, padding="same", activation="relu")),
            layers.Conv2DTranspose(channels, 4, strides=2, padding="same", activation="sigmoid"),
        ],
        name=name,
    )


# keras.applications trunks want 3 channels and at least 32x32 pixels.
_MIN_SIDE = 32


def _application(name, input_shape, weights, trunk_kwargs, input_size=None):
    lite = efficientnet_lite.CONSTRUCTORS.get(name)
    constructor = lite or getattr(keras.applications, name, None)
    if constructor is None or not callable(constructor) or inspect.ismodule(constructor):
        available = sorted(
            n for n in dir(keras.applications) if n[0].isupper() and callable(getattr(keras.applications, n))
        ) + sorted(efficientnet_lite.CONSTRUCTORS)
        raise ValueError(
            f"Unknown backbone {name!r}. Expected {SMALL_CNN!r} or a keras.applications "
            f"model name, one of {available}."
        )
    height, width, channels = input_shape
    if input_size is not None and input_size < _MIN_SIDE:
        raise ValueError(f"input_size must be at least {_MIN_SIDE}. Received: input_size={input_size}")
    side = (input_size, input_size) if input_size else (max(height, _MIN_SIDE), max(width, _MIN_SIDE))
    trunk = constructor(
        include_top=False,
        weights=weights,
        input_shape=(*side, 3),
        pooling="avg",
        **trunk_kwargs,
    )
    # Each application module ships the preprocessing its weights expect (0-255 input);
    # EfficientNet-Lite preprocesses inside the model.
    preprocess_input = (lambda x: x) if lite else inspect.getmodule(constructor).preprocess_input

    def preprocess(x):
        if channels == 1:
            x = ops.repeat(x, 3, axis=-1)
        if side != (height, width):
            x = ops.image.resize(x, side)
        return preprocess_input(x)

    return trunk, preprocess


def pretrained_features(images, trunk="EfficientNetLite0", input_size=None, batch_size=64, cache=True):
    """Fixed, label-free image features from an ImageNet trunk: its pooled
    last layer (1280-d for EfficientNet-Lite), e.g. the CNN features BGAN's
    paper builds its neighbour structure on.

    Computed once per (images, trunk, input size) and kept in the cache
    (`$TFHASH_CACHE_DIR/features/`, a `.npy` named by the sha256 of the
    images and the settings, written to a temporary file, synced and renamed).

    Args:
        images: raw images (n, height, width, channels), 0-255.
        trunk: a `Backbone` trunk name with ImageNet weights ("EfficientNetLite0", ...).
        input_size: the side the trunk sees (default: the images', at least 32).
        batch_size: images per forward pass.
        cache: read and write the cache.

    Returns:
        float32 (n, features).
    """
    import hashlib
    import json
    import os

    from tfhash.checks import check_images
    from tfhash.io import cache_dir, write_atomically

    images = check_images(images, np.shape(images)[1:])
    key = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    key.update(json.dumps([str(images.dtype), images.shape, trunk, input_size]).encode())
    path = os.path.join(cache_dir(), "features", f"{trunk}_{key.hexdigest()[:32]}.npy")
    if cache and os.path.isfile(path):
        return np.load(path, allow_pickle=False)
    backbone = Backbone(trunk, images.shape[1:], weights="imagenet", input_size=input_size, frozen=True)
    features = np.concatenate([
        keras.ops.convert_to_numpy(backbone(images[i : i + batch_size], training=False))
        for i in range(0, len(images), batch_size)
    ]).astype(np.float32)
    if cache:
        os.makedirs(os.path.dirname(path), exist_ok=True)

        def save(partial):
            with open(partial, "wb") as f:
                np.save(f, features, allow_pickle=False)

        write_atomically(path, save)
    return features


def trunk_inputs(images, backbone=SMALL_CNN, backbone_weights=None, backbone_input_size=None, freeze_backbone=False,
                 **_):
    """What a training plan feeds an image trainer: the images, or, for a
    frozen ImageNet trunk, its features computed once (`pretrained_features`,
    cached), which the frozen `Backbone` passes through. Training is the same
    (a frozen trunk runs in inference mode, a fixed function of the image) at
    the cost of one forward pass per image instead of one per step.

    Takes the trainer's trunk settings (`base.TRUNK_ARGUMENTS`); other keys are ignored.
    """
    if freeze_backbone and backbone != SMALL_CNN and backbone_weights == "imagenet":
        return pretrained_features(images, backbone, input_size=backbone_input_size)
    return images
