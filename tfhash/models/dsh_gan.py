"""DSH-GAN: Deep Semantic Hashing with Generative Adversarial Networks
(Qiu, Pan, Yao, Mei; SIGIR 2017). Semi-supervised, images.

A class-conditional generator G(noise, y) makes synthetic images. Each real
image x with label y forms a triplet with x+ = G(., y) and x- = G(., y'),
y' != y. One shared CNN reads every image; three heads sit on its
representation: classification (softmax, or sigmoid for multi-label), hash
(K sigmoid units H, bit = H > 0.5) and adversary (real vs synthetic), so the
shared CNN is the discriminator. Steps alternate: the shared CNN minimizes

    classification_weight * CE(x, x+, x-)
  + triplet_weight        * max(0, m - |H(x) - H(x-)|^2 + |H(x) - H(x+)|^2)
  + adversarial_weight    * (real vs synthetic cross-entropy)

then the generator minimizes -log D(G(.)) plus the classification loss of
its images under their conditioning labels. Unlabelled real images feed only
the adversarial stream: that is what makes it semi-supervised.

No public implementation exists; the choices the paper leaves open, one line each:
- Unlabelled rows: real images in the adversarial stream only; their synthetic pair (uniform class) too.
- Negatives: y' one class drawn uniformly among those x lacks; a row with every label has no triplet.
- Normalization: labelled losses over the global batch's labelled rows, adversarial ones over all rows.
- Multi-label classification: the per-class sigmoid cross-entropies summed.
- Margin: m = bits / 4 (squared distances between sigmoid codes range over [0, bits]).
- Loss weights: 1 each (the paper sums the three losses); the recipes use adversarial weight 0.1.
- Generator: a dense layer and two transposed convolutions, DCGAN's Adam(2e-4, beta_1=0.5), no batch norm.
- Generator loss: the non-saturating -log D(G(.)); real and synthetic images share one batch-norm pass.
- A frozen ImageNet trunk: the real images' features computed once; the synthetic ones go through it each step.
- Randomness: noise and drawn classes stateless, keyed by `seed` and the step, drawn for the global batch.
- `pairwise_weight` (not in the paper, off): DHN's balanced pairwise loss on the labelled real rows' 2 H - 1.

Defaults: bits 32, margin bits / 4, classification, triplet and adversarial
weights 1, pairwise_weight 0 (pairwise_alpha 0.25), noise_dim 64,
generator_batch_norm False, seed 0.
What was measured against DHN (the targets missed from scratch; at 10%
labels, met on a frozen ImageNet trunk): docs/methods/dsh_gan.md.

Only `DSHGAN.encoder` (shared CNN + hash head, a `HashModel`) is exported.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from tfhash.losses import PairwiseCrossEntropy, real_fake, triplet_ranking
from tfhash.models.backbones import image_generator
from tfhash.models.base import (
    EncoderHarness,
    ImageHashModel,
    TrainingPlan,
    finish_construction,
    gather_across_replicas,
    record_losses,
    replica_share,
)


@keras.saving.register_keras_serializable(package="tfhash")
class DSHGANEncoder(ImageHashModel):
    """The shared CNN and the hash head: the exported part of DSH-GAN.

    `call` returns 2 H - 1 = tanh(a / 2) for hash logits a, so the code bit
    (z >= 0) is the paper's H >= 0.5.

    Args:
        **kwargs: `ImageArguments` (bits, input_shape, the trunk) and Keras's.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hash_head = layers.Dense(self.bits, name="hash")
        finish_construction(self, DSHGANEncoder)

    def build(self, input_shape=None):
        if self.built:
            return
        super().build()
        if not self.hash_head.built:
            self.hash_head.build(self.feature_shape)

    def representation(self, images, training=False):
        """The shared CNN's representation, which all three heads read."""
        return self.backbone(images, training=training)

    def call(self, images, training=False):
        return tf.tanh(0.5 * self.hash_head(self.representation(images, training=training)))



def negative_classes(targets, uniform):
    """One-hot y' per row: the class, among those the row lacks, with the largest
    uniform draw (so a uniform pick); and whether the row lacks any class."""
    scores = tf.where(targets > 0, tf.cast(-1.0, uniform.dtype), uniform)
    num_classes = tf.shape(targets)[-1]
    return tf.one_hot(tf.argmax(scores, axis=-1), num_classes, dtype=targets.dtype), tf.reduce_any(targets <= 0, axis=-1)


@keras.saving.register_keras_serializable(package="tfhash")
class DSHGAN(EncoderHarness):
    """The DSH-GAN training harness: encoder, classification and adversary heads,
    conditional generator, two optimizers.

    Feed it `tfhash.data.semi_supervised_batches(...)`, or `pairwise_batches`
    when every image is labelled. Watch the generator with
    `tfhash.callbacks.GeneratedImageGrid`.

    Args:
        num_classes: number of classes (labels are class ids, or multi-hot
            rows of this width with `multi_label=True`).
        multi_label: sigmoid classification head for multi-hot labels; else softmax.
        noise_dim: size of the generator's noise input.
        margin: triplet margin m (default bits / 4).
        classification_weight, triplet_weight, adversarial_weight: loss weights
            (the adversarial weight applies to both players).
        pairwise_weight: weight of DHN's pairwise loss on the labelled real
            images' 2 H - 1, against the global batch's labelled real images
            (balanced, as DHN's recipe). Not in the paper: 0 (the default) is
            DSH-GAN as published; see docs/methods/dsh_gan.md for what 1 measured.
        pairwise_alpha: the pairwise loss's inner-product scale (DHN's alpha).
        generator_batch_norm: DCGAN's batch norm in the generator (synchronized
            across replicas); see docs/methods/dsh_gan.md for what it measured.
        seed: seeds the noise and drawn classes (stateless, per step).
        **kwargs: `ImageArguments` (bits, input_shape, the trunk) for the encoder, and Keras's.

    Examples:
    >>> model = DSHGAN(bits=32, input_shape=(28, 28, 1), num_classes=10)
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3),
    ...               g_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5))
    >>> model.fit(semi_supervised_batches(images, labels, 128, labelled_fraction=0.1), epochs=10)
    >>> codes = model.encoder.encode(images)
    """

    loss_names = ("loss", "classification_loss", "triplet_loss", "pairwise_loss", "d_loss", "g_loss")
    # The generator's default is DCGAN's Adam(2e-4, beta_1=0.5).
    optimizer_roles = {"optimizer": "adam", "g_optimizer": lambda: keras.optimizers.Adam(2e-4, beta_1=0.5)}

    def __init__(self, num_classes=10, multi_label=False, noise_dim=64, margin=None, classification_weight=1.0,
                 triplet_weight=1.0, adversarial_weight=1.0, pairwise_weight=0.0, pairwise_alpha=0.25,
                 generator_batch_norm=False, seed=0, **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2 (negatives need another class). Received: {num_classes}")
        self.num_classes = int(num_classes)
        self.multi_label = bool(multi_label)
        self.noise_dim = int(noise_dim)
        self.margin = float(self.image_arguments["bits"] / 4 if margin is None else margin)
        self.classification_weight = float(classification_weight)
        self.triplet_weight = float(triplet_weight)
        self.adversarial_weight = float(adversarial_weight)
        self.pairwise_weight = float(pairwise_weight)
        self.pairwise_loss = PairwiseCrossEntropy(alpha=pairwise_alpha, balanced=True)
        self.seed = int(seed)
        self.encoder = DSHGANEncoder(**self.image_arguments, name="encoder")
        self.classifier = layers.Dense(self.num_classes, name="classifier")
        self.adversary = layers.Dense(1, name="adversary")
        self.generator = image_generator(
            self.noise_dim + self.num_classes, self.encoder.image_shape, filters=(128, 64),
            batch_norm=generator_batch_norm,
        )
        self.generator_batch_norm = bool(generator_batch_norm)
        finish_construction(self, DSHGAN)

    def build(self, input_shape=None):
        if self.built:
            return
        if not self.encoder.built:
            self.encoder.build()
        width = self.encoder.feature_shape
        self.classifier.build(width)
        self.adversary.build(width)
        self.built = True

    def _cnn_variables(self):
        return (
            self.encoder.trainable_variables
            + self.classifier.trainable_variables
            + self.adversary.trainable_variables
        )

    def optimizer_variables(self):
        """`optimizer` trains the shared CNN and its heads; `g_optimizer` the generator."""
        return [(self.optimizer, self._cnn_variables()), (self.g_optimizer, self.generator.trainable_variables)]

    # -- pieces of a step -------------------------------------------------

    def _targets(self, labels):
        """Labels as float rows of width num_classes (one-hot for class ids)."""
        if self.multi_label:
            return tf.cast(labels, self.compute_dtype)
        return tf.one_hot(tf.cast(tf.reshape(labels, [-1]), "int32"), self.num_classes, dtype=self.compute_dtype)

    def _draws(self, rows, step):
        """This replica's share of the step's noise and class draws (stateless,
        keyed by seed and step, made for the global batch: `replica_share`)."""
        seeds = tf.random.experimental.stateless_split(tf.stack([self.seed, step]), 3)
        dtype = self.compute_dtype

        def draw(total):
            return (
                tf.random.stateless_normal([total, 2, self.noise_dim], seeds[0], dtype=dtype),
                tf.random.stateless_uniform([total, self.num_classes], seeds[1], dtype=dtype),
                tf.random.stateless_uniform([total, self.num_classes], seeds[2], dtype=dtype),
            )

        return replica_share(draw, rows)

    def _synthesize(self, targets, labelled, step, training):
        """x+ and x- (raw 0-255 scale) for each row, with their conditioning labels."""
        rows = tf.shape(targets)[0]
        noise, negative_draw, condition_draw = self._draws(rows, step)
        # Unlabelled rows: condition on a uniformly drawn class (argmax of uniform draws).
        drawn = tf.one_hot(tf.argmax(condition_draw, axis=-1), self.num_classes, dtype=self.compute_dtype)
        positive = tf.where(labelled[:, None] > 0, targets, drawn)
        negative, has_negative = negative_classes(positive, negative_draw)
        conditions = tf.concat([positive, negative], axis=0)
        noise = tf.concat([noise[:, 0], noise[:, 1]], axis=0)
        fakes = 255.0 * self.generator(tf.concat([noise, conditions], axis=-1), training=training)
        return fakes, conditions, tf.cast(has_negative, self.compute_dtype)

    def _heads(self, real, fakes, training):
        """Class, hash and adversary logits of the rows [real; fakes]."""
        if len(real.shape) == 2:
            # A frozen trunk's features of the real images, computed once
            # (`trunk_inputs`): only the synthetic images go through the trunk.
            # It runs in inference mode, a function of each row alone, so this
            # is the joint pass's result.
            features = tf.concat([self.encoder.representation(real, training=training),
                                  self.encoder.representation(fakes, training=training)], 0)
        else:  # one pass: real and synthetic images share the trunk's batch norm
            features = self.encoder.representation(tf.concat([real, fakes], 0), training=training)
        return self.classifier(features), self.encoder.hash_head(features), self.adversary(features)[:, 0]

    def _classification(self, logits, targets):
        if self.multi_label:
            return tf.reduce_sum(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits), axis=-1
            )
        return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)

    def _pairwise(self, codes, targets, labelled_all):
        """DHN's pairwise loss of each row against the global batch's labelled rows.

        `labelled_all` is the global batch's labelled flags (already gathered).
        The columns are held constant, as in DHN; unlabelled rows are not
        columns, and their own (row) losses are masked out by the caller.
        """
        codes_all, targets_all = gather_across_replicas(codes, targets)
        keep = labelled_all > 0
        columns = tf.stop_gradient(tf.boolean_mask(codes_all, keep))
        return self.pairwise_loss(codes, targets, columns, tf.boolean_mask(targets_all, keep))

    def train_step(self, data):
        images, extras = data
        if isinstance(extras, (tuple, list)):
            labels, labelled = extras
        else:  # (images, labels) batches: every row labelled
            labels, labelled = extras, tf.ones(tf.shape(images)[:1])
        images = tf.cast(images, self.compute_dtype)
        labelled = tf.cast(tf.reshape(labelled, [-1]), self.compute_dtype)
        targets = self._targets(labels)
        rows = tf.shape(images)[0]
        (labelled_all,) = gather_across_replicas(labelled)
        global_rows = tf.cast(tf.shape(labelled_all)[0], self.compute_dtype)
        global_labelled = tf.maximum(tf.reduce_sum(labelled_all), 1.0)

        def split(tensor):  # rows of [x; x+; x-]
            return tensor[:rows], tensor[rows : 2 * rows], tensor[2 * rows :]

        # The step keys this step's draws. Read once: the first update advances
        # it, and replicas may see that at different times.
        step = tf.cast(tf.identity(self.optimizer.iterations), "int32")

        # Shared CNN (the discriminator): classification + triplet on labelled
        # triplets, real vs synthetic on every row.
        fakes, conditions, has_negative = self._synthesize(targets, labelled, step, training=True)
        fakes = tf.stop_gradient(fakes)
        with tf.GradientTape() as tape:
            logits, hash_logits, adversary = self._heads(images, fakes, training=True)
            class_x, class_pos, class_neg = split(logits)
            h_x, h_pos, h_neg = split(tf.sigmoid(hash_logits))
            adv_x, adv_pos, adv_neg = split(adversary)
            positive_targets, negative_targets = conditions[:rows], conditions[rows:]
            classification = (
                self._classification(class_x, targets)
                + self._classification(class_pos, positive_targets)
                + has_negative * self._classification(class_neg, negative_targets)
            )
            triplet = has_negative * triplet_ranking(h_x, h_pos, h_neg, self.margin)
            d_loss = real_fake(adv_x, True) + 0.5 * (real_fake(adv_pos, False) + real_fake(adv_neg, False))
            supervised = self.classification_weight * classification + self.triplet_weight * triplet
            if self.pairwise_weight:
                pairwise = self._pairwise(2.0 * h_x - 1.0, targets, labelled_all)
                supervised += self.pairwise_weight * pairwise
            else:  # logged as 0: every tracker is updated, so Keras reports their synced means
                pairwise = tf.zeros_like(triplet)
            loss = (
                tf.reduce_sum(labelled * supervised) / global_labelled
                + self.adversarial_weight * tf.reduce_sum(d_loss) / global_rows
            )
            if self.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.losses))
        cnn_vars = self._cnn_variables()
        self.optimizer.apply(tape.gradient(loss, cnn_vars), cnn_vars)

        # Generator: fool the shared CNN, and be classified as its conditioning label.
        with tf.GradientTape() as tape:
            fakes, conditions, has_negative = self._synthesize(targets, labelled, step, training=True)
            logits, _, adversary = self._heads(images, fakes, training=True)
            _, class_pos, class_neg = split(logits)
            _, adv_pos, adv_neg = split(adversary)
            g_loss = self.adversarial_weight * 0.5 * (
                real_fake(adv_pos, True) + real_fake(adv_neg, True)
            ) + self.classification_weight * (
                self._classification(class_pos, conditions[:rows])
                + has_negative * self._classification(class_neg, conditions[rows:])
            )
            generator_loss = tf.reduce_sum(g_loss) / global_rows
        g_vars = self.generator.trainable_variables
        self.g_optimizer.apply(tape.gradient(generator_loss, g_vars), g_vars)

        return record_losses(
            self,
            # Rows whose mean is the shared CNN's objective (labelled terms scaled
            # from the labelled rows' mean to the whole batch's).
            loss=labelled * supervised * (global_rows / global_labelled) + self.adversarial_weight * d_loss,
            classification_loss=(classification, labelled),
            triplet_loss=(triplet, labelled),
            d_loss=d_loss,
            pairwise_loss=(pairwise, labelled),
            g_loss=g_loss,
        )

    def generate(self, labels, noise=None, seed=0):
        """Synthetic images (uint8, 0-255) for class ids (n,) or label rows (n, c)."""
        labels = np.asarray(labels)
        expected = (None, self.num_classes) if self.multi_label else (None,)
        if labels.ndim != len(expected) or (self.multi_label and labels.shape[1] != self.num_classes):
            raise ValueError(f"labels must have shape {expected}. Received: shape={labels.shape}")
        if not self.multi_label and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"class ids must be in [0, {self.num_classes}). Received: {labels.min()}..{labels.max()}")
        if noise is None:
            noise = np.random.default_rng(seed).standard_normal((len(labels), self.noise_dim))
        inputs = tf.concat([tf.cast(noise, self.compute_dtype), self._targets(labels)], axis=-1)
        images = self.generator(inputs, training=False)
        return tf.cast(tf.round(255.0 * images), "uint8").numpy()

    def get_config(self):
        return {
            **super().get_config(),
            "bits": self.bits,
            "input_shape": self.image_shape,
            "num_classes": self.num_classes,
            "multi_label": self.multi_label,
            **self.encoder.trunk_arguments(),
            "noise_dim": self.noise_dim,
            "margin": self.margin,
            "classification_weight": self.classification_weight,
            "triplet_weight": self.triplet_weight,
            "adversarial_weight": self.adversarial_weight,
            "pairwise_weight": self.pairwise_weight,
            "pairwise_alpha": self.pairwise_loss.alpha,
            "generator_batch_norm": self.generator_batch_norm,
            "seed": self.seed,
        }


def training_plan(data, *, bits, seed, strategy, model, train):
    """DSH-GAN on a protocol's training split with `labelled_fraction` of its
    labels kept, drawn per class (the registry's `plan`); a frozen ImageNet
    trunk's features of the real images are computed once (`trunk_inputs`)."""
    from tfhash.data import draw_labelled, semi_supervised_batches
    from tfhash.models.backbones import trunk_inputs

    images, labels = data.subset("train")
    fraction = train["labelled_fraction"]
    if not 0 < fraction <= 1:
        raise ValueError(f"labelled_fraction must be in (0, 1]. Received: {fraction}")
    labelled = np.ones(len(labels), bool) if fraction >= 1 else draw_labelled(labels, fraction, seed=seed)
    multi_label = labels.ndim == 2
    with strategy.scope():
        net = DSHGAN(bits=bits, input_shape=images.shape[1:], multi_label=multi_label,
                     num_classes=labels.shape[1] if multi_label else int(labels.max()) + 1, seed=seed, **model)
        net.compile(optimizer=keras.optimizers.Adam(train["learning_rate"]),
                    g_optimizer=keras.optimizers.Adam(train["g_learning_rate"], beta_1=0.5))
    # A frozen ImageNet trunk's features of the real images are computed once;
    # the synthetic ones still pass through it every step.
    inputs = trunk_inputs(images, **model)
    batches = semi_supervised_batches(inputs, labels, train["batch_size"], labelled=labelled, seed=seed)
    return TrainingPlan(net, batches, train["epochs"])
