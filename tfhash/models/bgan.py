"""BGAN: Binary Generative Adversarial Networks for image retrieval (Song et al., AAAI 2018).

Unsupervised, images. An encoder maps an image x to z (K units) and to
b = tanh(beta z) in training, sign(z) at inference (`AnnealedSign`: beta
grows, so tanh(beta z) -> sign z). A generator G reconstructs x from b; a
discriminator D tells x from G(b). No labels: S_ij = +1 when j is one of i's
K1 nearest or K2 second-order neighbours in a fixed feature space
(`tfhash.neighbours`), else -1. The encoder and G minimize

    neighbour_weight   * mean_j (<b_i, b_j> / K - S_ij)^2
  + content_weight     * (mean (x - G(b))^2 + mean (D_f(x) - D_f(G(b)))^2)   (D_f: D's last conv)
  + adversarial_weight * -log D(G(b))

and D minimizes -log D(x) - log(1 - D(G(b))); the two updates alternate each step.

Choices, one line each:
- Annealing: `BetaSchedule` really advances beta (the official code lists [2, 5, 10, 15, 20] but never advances it).
- Feature space for S: PCA of the pixels (`pixel_features`), or the paper's setting, an ImageNet CNN's
  features (the plan's `features="EfficientNetLite0"`, offline, cached).
- Pair weights: `balanced=True` weighs neighbour pairs T / P, others 1 (`balanced_pair_weights`); the paper does not.
- Pairs: each row against the global batch, columns held constant.
- Quantization: none beyond the annealing (the code adds mean((Z - sign Z)^2)).
- Networks: a small CNN encoder (the paper: VGG19-like), a dense + two transposed-conv generator, a two-conv D.

Defaults: bits 32, beta 1 (then the schedule's), weights 1 / 1 / 0.01,
balanced False. The recipes (`bgan_fashion_mnist_32`, `_64`) set balanced,
K1 20, K2 30, beta 2 to 20 over 10 epochs. What was measured: docs/methods/bgan.md.

Only `BGAN.encoder` (a `HashModel`) is exported; the generator and the
discriminator are the training harness.
"""

import warnings

import keras
import tensorflow as tf
from keras import layers

from tfhash.layers import AnnealedSign
from tfhash.models.backbones import image_generator
from tfhash.losses import balanced_pair_weights, real_fake
from tfhash.models.base import (
    EncoderHarness,
    ImageHashModel,
    TrainingPlan,
    finish_construction,
    gather_across_replicas,
    record_losses,
)
from tfhash.neighbours import batch_similarity


@keras.saving.register_keras_serializable(package="tfhash")
class BGANEncoder(ImageHashModel):
    """Image -> trunk -> K units -> AnnealedSign: the exported part of BGAN.

    Args:
        beta: initial beta of the annealed sign.
        **kwargs: `ImageArguments` (bits, input_shape, the trunk) and Keras's.
    """

    def __init__(self, beta=1.0, **kwargs):
        super().__init__(**kwargs)
        self.projection = layers.Dense(self.bits, name="fch")
        self.sign = AnnealedSign(beta=beta, name="annealed_sign")
        finish_construction(self, BGANEncoder)

    def build(self, input_shape=None):
        if self.built:
            return
        super().build()
        self.projection.build(self.feature_shape)
        self.sign.build((None, self.bits))

    def call(self, images, training=False):
        return self.sign(self.projection(self.backbone(images, training=training)), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "beta": self.sign.initial_beta,
        }


def _discriminator(image_shape):
    """Image in [0, 1] -> (real/fake logit, features of the last conv layer)."""
    inputs = keras.Input(image_shape)
    x = layers.LeakyReLU(0.2)(layers.Conv2D(32, 4, strides=2, padding="same")(inputs))
    features = layers.LeakyReLU(0.2)(layers.Conv2D(64, 4, strides=2, padding="same")(x))
    logit = layers.Dense(1)(layers.Flatten()(features))
    return keras.Model(inputs, [logit, features], name="discriminator")


@keras.saving.register_keras_serializable(package="tfhash")
class BGAN(EncoderHarness):
    """The BGAN training harness: encoder, generator, discriminator, two optimizers.

    Each step first trains the discriminator on real images vs reconstructions,
    then the encoder and generator on

        neighbour_weight * mean_j (<b_i, b_j> / K - S_ij)^2
      + content_weight * (pixel L2(x, G(b)) + L2 of discriminator features)
      + adversarial_weight * -log D(G(b))

    where b = tanh(beta z) and S_ij in {-1, +1} comes from the neighbour lists
    the pipeline carries (`tfhash.data.neighbour_batches`). Columns j range
    over the global batch (gathered across replicas), so N replicas take the
    steps one device takes. Drive beta with `tfhash.callbacks.BetaSchedule`.

    Args:
        beta: initial beta of the encoder's annealed sign.
        neighbour_weight, content_weight, adversarial_weight: loss weights.
        balanced: weigh neighbour pairs T / P and the others 1 in the neighbour
            loss, so neighbour pairs weigh as much as all pairs
            (`tfhash.losses.balanced_pair_weights`; the paper does not).
        **kwargs: `ImageArguments` (bits, input_shape, the trunk) for the encoder, and Keras's.

    Examples:
    >>> model = BGAN(bits=32, input_shape=(28, 28, 1))
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3), d_optimizer=keras.optimizers.Adam(1e-4))
    >>> model.fit(neighbour_batches(images, neighbours, 128), epochs=20,
    ...           callbacks=[BetaSchedule.steps([2, 5, 10, 15, 20], every=4)])
    >>> codes = model.encoder.encode(images)
    """

    loss_names = ("loss", "neighbour_loss", "content_loss", "adversarial_loss", "d_loss")
    optimizer_roles = {"optimizer": "adam", "d_optimizer": "adam"}

    def __init__(self, beta=1.0, neighbour_weight=1.0, content_weight=1.0, adversarial_weight=0.01, balanced=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.balanced = bool(balanced)
        self.encoder = BGANEncoder(beta=beta, **self.image_arguments, name="encoder")
        self.generator = image_generator(self.bits, self.encoder.image_shape)
        self.discriminator = _discriminator(self.encoder.image_shape)
        self.neighbour_weight = float(neighbour_weight)
        self.content_weight = float(content_weight)
        self.adversarial_weight = float(adversarial_weight)
        finish_construction(self, BGAN)

    def build(self, input_shape=None):
        if not self.encoder.built:  # built when made, unless a subclass's __init__ skipped it
            self.encoder.build()
        self.built = True

    def optimizer_variables(self):
        """`optimizer` trains encoder + generator, `d_optimizer` the discriminator."""
        return [
            (self.optimizer, self.encoder.trainable_variables + self.generator.trainable_variables),
            (self.d_optimizer, self.discriminator.trainable_variables),
        ]

    def train_step(self, data):
        images, (ids, neighbours) = data
        real = tf.cast(images, self.compute_dtype) / 255.0
        ids_all, neighbours_all = gather_across_replicas(ids, neighbours)
        global_batch = tf.shape(ids_all)[0]

        # Train the discriminator: real images -> 1, reconstructions -> 0.
        with tf.GradientTape() as tape:
            fake = self.generator(self.encoder(images, training=True), training=True)
            real_logit, _ = self.discriminator(real, training=True)
            fake_logit, _ = self.discriminator(tf.stop_gradient(fake), training=True)
            d_per_example = real_fake(real_logit[:, 0], True) + real_fake(fake_logit[:, 0], False)
            d_loss = tf.nn.compute_average_loss(d_per_example, global_batch_size=global_batch)
        d_vars = self.discriminator.trainable_variables
        self.d_optimizer.apply(tape.gradient(d_loss, d_vars), d_vars)

        # Train the encoder and generator.
        with tf.GradientTape() as tape:
            b = self.encoder(images, training=True)
            fake = self.generator(b, training=True)
            fake_logit, fake_features = self.discriminator(fake, training=False)
            _, real_features = self.discriminator(real, training=False)
            (b_all,) = gather_across_replicas(b)
            s = tf.cast(batch_similarity(ids, neighbours, ids_all, neighbours_all), b.dtype)
            products = tf.matmul(b, tf.stop_gradient(b_all), transpose_b=True) / self.bits
            pair_loss = tf.square(products - s)
            if self.balanced:
                # A random batch holds about (K1 + K2) / n of neighbours: without
                # weights S is nearly all -1 and the loss ignores the neighbours.
                # Counted over the global batch's pairs, as every replica sees them.
                among_columns = tf.cast(batch_similarity(ids_all, neighbours_all), b.dtype)
                pair_loss *= balanced_pair_weights(s, among_columns)
            neighbour = tf.reduce_mean(pair_loss, axis=1)
            content = tf.reduce_mean(tf.square(real - fake), axis=[1, 2, 3]) + tf.reduce_mean(
                tf.square(real_features - fake_features), axis=[1, 2, 3]
            )
            adversarial = real_fake(fake_logit[:, 0], True)
            per_example = (
                self.neighbour_weight * neighbour
                + self.content_weight * content
                + self.adversarial_weight * adversarial
            )
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        g_vars = self.encoder.trainable_variables + self.generator.trainable_variables
        self.optimizer.apply(tape.gradient(loss, g_vars), g_vars)

        return record_losses(
            self,
            loss=per_example,
            neighbour_loss=neighbour,
            content_loss=content,
            adversarial_loss=adversarial,
            d_loss=d_per_example,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "bits": self.bits,
            "input_shape": self.image_shape,
            **self.encoder.trunk_arguments(),
            "beta": self.encoder.sign.initial_beta,
            "neighbour_weight": self.neighbour_weight,
            "content_weight": self.content_weight,
            "adversarial_weight": self.adversarial_weight,
            "balanced": self.balanced,
        }


def training_plan(data, *, bits, seed, strategy, model, train):
    """BGAN on a protocol's training images, labels dropped (the registry's `plan`):
    the neighbour structure of fixed features (`train["features"]`: "pixels",
    their PCA, or an ImageNet trunk's name such as "EfficientNetLite0", seen at
    `feature_input_size`), beta annealed through `train["betas"]` in equal
    stretches of the epochs."""
    from tfhash.callbacks import BetaSchedule
    from tfhash.data import neighbour_batches
    from tfhash.models.backbones import pretrained_features
    from tfhash.neighbours import neighbour_structure, pixel_features

    images, _ = data.subset("train")  # the labels are dropped here
    if train["features"] == "pixels":
        features = pixel_features(images)
    else:  # the paper's setting: an ImageNet CNN's features, computed once and cached
        features = pretrained_features(images, train["features"], input_size=train["feature_input_size"])
    neighbours = neighbour_structure(features, k1=train["k1"], k2=train["k2"])
    with strategy.scope():
        net = BGAN(bits=bits, input_shape=images.shape[1:], **model)
        net.compile(optimizer=keras.optimizers.Adam(train["learning_rate"]),
                    d_optimizer=keras.optimizers.Adam(train["d_learning_rate"]))
    betas, epochs = train["betas"], train["epochs"]
    if epochs < len(betas):  # each beta holds at least one epoch: the last ones are never reached
        warnings.warn(f"BGAN: epochs={epochs} is fewer than its {len(betas)} betas ({betas}, at least an epoch each), "
                      f"so the sign is annealed only to beta {betas[epochs - 1]}, never to {betas[-1]}. Train at least "
                      f"{len(betas)} epochs, or give fewer betas.", stacklevel=2)
    return TrainingPlan(net, neighbour_batches(images, neighbours, train["batch_size"], seed=seed), epochs,
                [BetaSchedule.steps(betas, every=max(1, epochs // len(betas)))])
