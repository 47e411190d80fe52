"""UGACH: Unsupervised Generative Adversarial Cross-modal Hashing
(Zhang, Peng, Yuan; AAAI 2018). Unsupervised, image-text.

Generator and discriminator have the same two-layer form per modality on
fixed features x: phi(x) = tanh(W_c x + b_c), h(x) = sigmoid(W_h phi(x) + b_h),
bit = h > 0.5. No labels: a correlation graph (`tfhash.neighbours.correlation_graph`:
each item, its k image and its k text nearest neighbours) says which
image-text pairs are truly related.

For a query q of one modality, with x^M a related item of the other modality
(from the graph) and x^G one the generator picks:

    p(x | q)  = softmax_x(-|h_G(q) - h_G(x)|^2)                          (generator, its own h)
    f(x^G, q) = max(0, m + |h(q) - h(x^M)|^2 - |h(q) - h(x^G)|^2)         (discriminator, its own h)

The discriminator minimizes f (related pairs closer than picked ones by m);
the pick is discrete, so the generator learns by REINFORCE with the reward
sigmoid(f(x^G, q)). The generator is an adversarial sampler of hard
negatives; the discriminator's codes are the ones used for retrieval
(`image_encoder`, `text_encoder`, both exported).

Choices, one line each (reference: github.com/PKU-ICST-MIPL/UGACH_AAAI2018):
- Loss: the code's hinge f for the discriminator (its "svm" loss), reward sigmoid(f), m = bits / 8 (its BETA).
- Candidates: the other modality's rows of the global batch, less the query's graph relatives (code: 1/50 of the set).
- Alternation: each step D, then G rewarded by the updated D on the same picks (code: whole epochs, 1 D then 2 G).
- Generator's log p(x | q): a softmax over all candidates, as the paper (the code: over its two fed-back picks).
- Pre-training: `pretrain_steps` of graph-only steps with uniform negatives first; `generator=False` throughout.
- Reward: the code's raw sigmoid(f) in [0.5, 1); `reward_baseline=True` subtracts the batch mean.
- Image features: `PixelPCA` (fitted by `UGACH.adapt`, no labels, part of the encoder), or with
  `features="EfficientNetLite0"` a frozen ImageNet trunk's pooled features (the paper: VGG19 fc7).
- Training reads the image features computed once (`image_features`, cached for a trunk): the encoder passes rank-2 input through.
- Checkpoints: chosen by the label-free `pair_retrieval_map`, never by label mAP as the code does.
- Randomness: picks stateless, keyed by `seed` and the step, drawn for the global batch.

Defaults: bits 32, margin bits / 8, features "pixels", feature_dims 512, hidden_units 1024,
generator True, pretrain_steps 0, reward_baseline False, seed 0; generator
Adam(1e-4). The recipes (`ugach_open_clip_art_32`, `_64`) use a 5 + 5
neighbour graph, 10 graph-only epochs then 20 with the generator.
What was measured, including the generator's missed target: docs/methods/ugach.md.
"""

import warnings

import keras
import tensorflow as tf
from keras import layers

from tfhash.layers import check_bits
from tfhash.losses import squared_euclidean_distances, triplet_ranking
from tfhash.models.backbones import Backbone, PixelPCA
from tfhash.models.base import (
    BowEncoder,
    HashModel,
    Trainer,
    TrainingPlan,
    finish_construction,
    gather_across_replicas,
    record_losses,
    replica_share,
)
from tfhash.neighbours import batch_similarity

# Logit of a candidate that must not be picked (a relative of the query).
_EXCLUDED = -1e9


@keras.saving.register_keras_serializable(package="tfhash")
class TwoLayerHash(layers.Layer):
    """UGACH's per-modality form: features -> tanh common layer -> hash logits a
    (h = sigmoid(a))."""

    def __init__(self, bits=32, hidden_units=1024, **kwargs):
        super().__init__(**kwargs)
        check_bits(bits)
        self.bits, self.hidden_units = bits, int(hidden_units)
        self.common = layers.Dense(self.hidden_units, activation="tanh", name="common")
        self.hash = layers.Dense(bits, name="hash")

    def build(self, input_shape):
        self.common.build(input_shape)
        self.hash.build((None, self.hidden_units))

    def call(self, features):
        return self.hash(self.common(features))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.bits)

    def get_config(self):
        return {**super().get_config(), "bits": self.bits, "hidden_units": self.hidden_units}


class _UGACHEncoder(HashModel):
    """Fixed features, then `TwoLayerHash`. `call` returns 2 h - 1 = tanh(a / 2),
    so the code bit (z >= 0) is h >= 0.5."""

    def features(self, inputs):
        raise NotImplementedError

    def hash_logits(self, features):
        return self.head(features)

    def call(self, inputs, training=False):
        return tf.tanh(0.5 * self.head(self.features(inputs)))


@keras.saving.register_keras_serializable(package="tfhash")
class UGACHImageEncoder(_UGACHEncoder):
    """UGACH's image network: raw images -> fixed features -> `TwoLayerHash`.

    Args:
        bits: code length K (multiple of 8).
        input_shape: raw image shape, pixels 0-255.
        feature_dims: principal components kept as features (`features="pixels"`).
        hidden_units: width of the common representation.
        features: "pixels" (`PixelPCA`, fitted by `UGACH.adapt`) or a frozen
            trunk's name, e.g. "EfficientNetLite0" (its pooled features).
        feature_input_size: the side the trunk sees (default: the images').
        feature_weights: the trunk's weights when built ("imagenet"); a saved
            encoder restores them from its archive, never from here.
    """

    def __init__(self, bits=32, input_shape=(64, 64, 3), feature_dims=512, hidden_units=1024, features="pixels",
                 feature_input_size=None, feature_weights=None, **kwargs):
        super().__init__(**kwargs)
        self.bits = bits
        self.image_shape = tuple(int(d) for d in input_shape)
        self.hidden_units = int(hidden_units)
        self.feature_source, self.feature_input_size = features, feature_input_size
        # Saved weights are keyed by attribute name: `pca` as before trunks existed, `trunk` for a trunk.
        self.pca = self.trunk = None
        if features == "pixels":
            self.pca = PixelPCA(int(feature_dims), self.image_shape, name="pixel_pca")
            self.feature_dims = int(feature_dims)
        else:
            self.trunk = Backbone(features, self.image_shape, weights=feature_weights,
                                  input_size=feature_input_size, frozen=True, name="trunk")
            self.feature_dims = int(self.trunk.compute_output_shape((None, *self.image_shape))[-1])
        self.head = TwoLayerHash(bits=bits, hidden_units=self.hidden_units, name="two_layer_hash")
        finish_construction(self, UGACHImageEncoder)

    @classmethod
    def from_config(cls, config):
        # Weights come from the archive being loaded, never from a path or URL in its config.
        return super().from_config({**config, "feature_weights": None})

    def _extractor(self):
        return self.pca if self.pca is not None else self.trunk

    def build(self, input_shape=None):
        if not self._extractor().built:
            self._extractor().build((None, *self.image_shape))
        if not self.head.built:
            self.head.build((None, self.feature_dims))
        self.built = True

    def features(self, images):
        """Raw images -> features; features computed earlier (rank 2) pass through."""
        if len(images.shape) == 2:
            return tf.cast(images, self.compute_dtype)
        return self._extractor()(images)

    def get_config(self):
        return {
            **super().get_config(),
            "bits": self.bits,
            "input_shape": self.image_shape,
            "feature_dims": self.feature_dims,
            "hidden_units": self.hidden_units,
            "features": self.feature_source,
            "feature_input_size": self.feature_input_size,
        }


@keras.saving.register_keras_serializable(package="tfhash")
class UGACHTextEncoder(_UGACHEncoder, BowEncoder):
    """UGACH's text network: bag of words (V,) -> `TwoLayerHash`.

    Its serving input is `bow`: float32 (None, V).

    Args:
        bits: code length K (multiple of 8).
        vocabulary_size: V.
        hidden_units: width of the common representation.
    """

    def __init__(self, bits=32, vocabulary_size=1386, hidden_units=1024, **kwargs):
        super().__init__(**kwargs)
        self.bits = bits
        self.vocabulary_size, self.hidden_units = int(vocabulary_size), int(hidden_units)
        self.head = TwoLayerHash(bits=bits, hidden_units=self.hidden_units, name="two_layer_hash")
        finish_construction(self, UGACHTextEncoder)

    def build(self, input_shape=None):
        if not self.head.built:
            self.head.build((None, self.vocabulary_size))
        self.built = True

    def features(self, bow):
        return tf.cast(bow, self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "bits": self.bits,
            "vocabulary_size": self.vocabulary_size,
            "hidden_units": self.hidden_units,
        }


def sample_candidates(logits, excluded, gumbel):
    """One candidate per row drawn from softmax(logits) over the candidates not
    excluded (Gumbel-max: argmax of logits plus Gumbel noise)."""
    return tf.argmax(tf.where(excluded, tf.cast(_EXCLUDED, logits.dtype), logits) + gumbel, axis=-1, output_type="int32")


@keras.saving.register_keras_serializable(package="tfhash")
class UGACH(Trainer):
    """The UGACH training harness: the discriminator's two encoders (exported),
    the generator's two networks and two optimizers.

    Feed it `tfhash.data.graph_batches(images, texts, graph, batch_size)` with
    `graph = correlation_graph(model.image_features(images), texts)`, after
    `model.adapt(images)`.

    Args:
        bits: code length K (multiple of 8).
        input_shape: raw image shape.
        vocabulary_size: V of the bags of words.
        feature_dims: `PixelPCA` components of the image features.
        hidden_units: width of every common layer.
        features: the image features: "pixels" (their PCA, fitted by `adapt`)
            or an ImageNet trunk, e.g. "EfficientNetLite0" (frozen, pooled).
        feature_input_size: the side that trunk sees (default: the images').
        margin: m of the relevance hinge (default bits / 8, the code's).
        generator: False trains the discriminator with uniformly drawn
            negatives throughout (UGACH without its generator).
        pretrain_steps: steps of that before the generator picks negatives.
        reward_baseline: subtract the batch's mean reward (measured: docs/methods/ugach.md).
        seed: seeds the picks (stateless, per step).

    Examples:
    >>> model = UGACH(bits=32, input_shape=(64, 64, 3), vocabulary_size=1021)
    >>> model.adapt(images)
    >>> graph = correlation_graph(model.image_features(images), texts, k=5)
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-4))
    >>> model.fit(graph_batches(images, texts, graph, 256), epochs=30)
    >>> image_codes = model.image_encoder.encode(images)
    """

    loss_names = ("d_loss", "g_loss", "reward", "hard_fraction")
    # The generator's default Adam(1e-4): at 1e-3 it overpowered the discriminator.
    optimizer_roles = {"optimizer": "adam", "g_optimizer": lambda: keras.optimizers.Adam(1e-4)}

    def __init__(
        self,
        bits=32,
        input_shape=(64, 64, 3),
        vocabulary_size=1386,
        feature_dims=512,
        hidden_units=1024,
        features="pixels",
        feature_input_size=None,
        margin=None,
        generator=True,
        pretrain_steps=0,
        reward_baseline=False,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_bits(bits)
        self.margin = float(bits / 8 if margin is None else margin)
        self.use_generator = bool(generator)
        self.pretrain_steps = int(pretrain_steps)
        self.reward_baseline = bool(reward_baseline)
        self.seed = int(seed)
        # ImageNet weights for a trunk, read when the trainer is built; the saved encoder carries them.
        self.image_encoder = UGACHImageEncoder(
            bits=bits, input_shape=input_shape, feature_dims=feature_dims, hidden_units=hidden_units,
            features=features, feature_input_size=feature_input_size,
            feature_weights=None if features == "pixels" else "imagenet", name="image_encoder")
        self.text_encoder = UGACHTextEncoder(bits=bits, vocabulary_size=vocabulary_size, hidden_units=hidden_units,
                                             name="text_encoder")
        self.generator_image = TwoLayerHash(bits=bits, hidden_units=hidden_units, name="generator_image")
        self.generator_text = TwoLayerHash(bits=bits, hidden_units=hidden_units, name="generator_text")
        finish_construction(self, UGACH)

    @property
    def bits(self):
        return self.image_encoder.bits

    def encoders(self):
        return {"image": self.image_encoder, "text": self.text_encoder}

    def build(self, input_shape=None):
        if self.built:
            return
        self.image_encoder.build()
        self.text_encoder.build()
        self.generator_image.build((None, self.image_encoder.feature_dims))
        self.generator_text.build((None, self.text_encoder.vocabulary_size))
        self.built = True

    def call(self, inputs, training=False):
        """{"images", "texts"} -> (relaxed image codes, relaxed text codes)."""
        return self.image_encoder(inputs["images"]), self.text_encoder(inputs["texts"])

    def adapt(self, images):
        """Fits the image features (`PixelPCA`) on training images; no labels. A trunk needs no fitting."""
        if not self.built:
            self.build()
        if self.image_encoder.pca is not None:
            self.image_encoder.pca.adapt(self.image_encoder.check_inputs(images))
        return self

    def image_features(self, images, batch_size=512):
        """The fixed image features (NumPy), e.g. for `correlation_graph` and
        for `graph_batches` (computed once; a trunk's are cached on disk)."""
        self._check_adapted()
        images = self.image_encoder.check_inputs(images)
        encoder = self.image_encoder
        if encoder.pca is None:
            from tfhash.models.backbones import pretrained_features

            return pretrained_features(images, encoder.feature_source, input_size=encoder.feature_input_size)
        return tf.concat([encoder.features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)],
                         0).numpy()

    def _check_adapted(self):
        if not self.built or (self.image_encoder.pca is not None and not self.image_encoder.pca.adapted):
            raise ValueError(
                "The image features are not fitted: call model.adapt(train_images) before "
                "image_features or fit (UGACH reads fixed PCA features of the pixels)."
            )

    def _d_variables(self):
        return self.image_encoder.head.trainable_variables + self.text_encoder.head.trainable_variables

    def _g_variables(self):
        return self.generator_image.trainable_variables + self.generator_text.trainable_variables

    def optimizer_variables(self):
        """`optimizer` trains the discriminator (both encoders), `g_optimizer` the generator."""
        return [(self.optimizer, self._d_variables()), (self.g_optimizer, self._g_variables())]

    def fit(self, *args, **kwargs):
        self._check_adapted()
        return super().fit(*args, **kwargs)

    # -- pieces of a step -------------------------------------------------

    def _gumbel(self, rows, columns, step, stream):
        """This replica's rows of Gumbel noise drawn for the global batch (stateless)."""
        seed = tf.random.experimental.stateless_fold_in(tf.stack([self.seed, step]), stream)
        uniform = replica_share(
            lambda total: tf.random.stateless_uniform(
                [total, columns], seed, minval=1e-20, maxval=1.0, dtype=self.compute_dtype
            ),
            rows,
        )
        return -tf.math.log(-tf.math.log(uniform))

    def pick_probabilities(self, images, texts, related=None):
        """The generator's p(text | image): row i is image i's distribution over
        the n texts, with `related` (n, n) bool pairs excluded (for diagnosis)."""
        features = self.image_encoder.features(tf.convert_to_tensor(images))
        texts = tf.cast(texts, self.compute_dtype)
        if related is None:
            related = tf.zeros([tf.shape(features)[0], tf.shape(texts)[0]], "bool")
        logits = self._generator_logits(features, texts, self.generator_image, self.generator_text, related)
        return tf.nn.softmax(logits).numpy()

    def _generator_logits(self, queries, candidates, query_net, candidate_net, related):
        """log p(x | q) up to a constant: -|h(q) - h(x)|^2, relatives excluded."""
        distances = squared_euclidean_distances(tf.sigmoid(query_net(queries)), tf.sigmoid(candidate_net(candidates)))
        return tf.where(related, tf.cast(_EXCLUDED, distances.dtype), -distances)

    def train_step(self, data):
        images, texts = data["images"], tf.cast(data["texts"], self.compute_dtype)
        ids, neighbours = data["ids"], data["neighbours"]
        rows = tf.shape(ids)[0]
        # Read once: the discriminator's update advances it.
        step = tf.cast(tf.identity(self.optimizer.iterations), "int32")
        image_features = self.image_encoder.features(images)
        related_images = self.image_encoder.features(data["positive_images"])
        related_texts = tf.cast(data["positive_texts"], self.compute_dtype)

        # Candidates: the other modality's rows of the global batch, less the
        # query's relatives (itself included: its list starts with it).
        all_images, all_texts, all_ids, all_neighbours = gather_across_replicas(
            image_features, texts, ids, neighbours
        )
        related = batch_similarity(ids, neighbours, all_ids, all_neighbours) > 0
        has_candidate = tf.cast(tf.reduce_any(~related, axis=-1), self.compute_dtype)
        columns = tf.shape(all_ids)[0]
        adversarial = tf.constant(self.use_generator) & (step >= self.pretrain_steps)

        # The generator's scores of every candidate. Its networks do not change
        # before its own update, so this one forward pass serves the picks and,
        # in the same tape, the generator's loss.
        with tf.GradientTape() as g_tape:
            logits_text = self._generator_logits(image_features, all_texts, self.generator_image,
                                                 self.generator_text, related)
            logits_image = self._generator_logits(texts, all_images, self.generator_text, self.generator_image,
                                                  related)

        def pick(logits, stream):
            return sample_candidates(tf.where(adversarial, logits, tf.zeros_like(logits)), related,
                                     self._gumbel(rows, columns, step, stream))

        pick_texts, pick_images = pick(logits_text, 0), pick(logits_image, 1)
        picked_texts, picked_images = tf.gather(all_texts, pick_texts), tf.gather(all_images, pick_images)

        def hinges():
            """(image-query f, text-query f) per row, on the discriminator's codes."""
            image_net, text_net = self.image_encoder.hash_logits, self.text_encoder.hash_logits
            h_image, h_text = tf.sigmoid(image_net(image_features)), tf.sigmoid(text_net(texts))
            image_query = triplet_ranking(
                h_image, tf.sigmoid(text_net(related_texts)), tf.sigmoid(text_net(picked_texts)), self.margin
            )
            text_query = triplet_ranking(
                h_text, tf.sigmoid(image_net(related_images)), tf.sigmoid(image_net(picked_images)), self.margin
            )
            return image_query * has_candidate, text_query * has_candidate

        # Discriminator: related pairs closer than picked ones by the margin.
        with tf.GradientTape() as tape:
            image_query, text_query = hinges()
            d_rows = image_query + text_query
            d_loss = tf.nn.compute_average_loss(d_rows)
            if self.losses:
                d_loss += tf.nn.scale_regularization_loss(tf.add_n(self.losses))
        d_vars = self._d_variables()
        self.optimizer.apply(tape.gradient(d_loss, d_vars), d_vars)

        # Generator: REINFORCE with the updated discriminator's reward sigmoid(f).
        image_query, text_query = hinges()
        rewards = tf.stop_gradient(tf.stack([tf.sigmoid(image_query), tf.sigmoid(text_query)], axis=-1))
        advantages = rewards
        if self.reward_baseline:
            (all_rewards, all_has) = gather_across_replicas(rewards, has_candidate)
            baseline = tf.reduce_sum(all_rewards * all_has[:, None], axis=0) / tf.maximum(tf.reduce_sum(all_has), 1.0)
            advantages = rewards - baseline
        with g_tape:  # resumes recording on the generator's scores
            log_p = tf.stack(
                [
                    tf.gather(tf.nn.log_softmax(logits_text), pick_texts, batch_dims=1),
                    tf.gather(tf.nn.log_softmax(logits_image), pick_images, batch_dims=1),
                ],
                axis=-1,
            )
            g_rows = -tf.reduce_sum(log_p * advantages, axis=-1) * has_candidate
            # Before the generator picks, it has nothing to learn from.
            g_loss = tf.nn.compute_average_loss(g_rows) * tf.cast(adversarial, self.compute_dtype)
        g_vars = self._g_variables()
        self.g_optimizer.apply(g_tape.gradient(g_loss, g_vars), g_vars)

        return record_losses(
            self,
            d_loss=d_rows,
            g_loss=g_rows * tf.cast(adversarial, self.compute_dtype),
            reward=(tf.reduce_mean(rewards, axis=-1), has_candidate),
            hard_fraction=(tf.reduce_mean(tf.cast(tf.stack([image_query, text_query], -1) > 0, self.compute_dtype), -1),
                           has_candidate),
        )

    def get_config(self):
        return {
            **super().get_config(),
            "bits": self.bits,
            "input_shape": self.image_encoder.image_shape,
            "vocabulary_size": self.text_encoder.vocabulary_size,
            "feature_dims": self.image_encoder.feature_dims,
            "hidden_units": self.image_encoder.hidden_units,
            "features": self.image_encoder.feature_source,
            "feature_input_size": self.image_encoder.feature_input_size,
            "margin": self.margin,
            "generator": self.use_generator,
            "pretrain_steps": self.pretrain_steps,
            "reward_baseline": self.reward_baseline,
            "seed": self.seed,
        }


def training_plan(data, *, bits, seed, strategy, model, train):
    """UGACH on an image-text protocol's training split, labels dropped (the
    registry's `plan`): PCA image features fitted on the training images, the
    correlation graph of their k nearest images and texts; the epoch with the
    best label-free pair score on held-out pairs is kept."""
    import numpy as np

    from tfhash.callbacks import BestCheckpoint
    from tfhash.data import graph_batches
    from tfhash.evaluation import pair_retrieval_map, validation_rows
    from tfhash.neighbours import correlation_graph

    images, texts, _ = data.subset("train")  # the labels are dropped here
    batch_size = train["batch_size"]
    epochs, pretrain = train["epochs"], train["pretrain_epochs"]
    if model.get("generator", True) and epochs <= pretrain:
        warnings.warn(f"UGACH: epochs={epochs} ends within its {pretrain} pre-training epochs (the correlation graph "
                      f"alone), so the generator never picks negatives. Train at least {pretrain + 1} epochs, or set "
                      f"pretrain_epochs below epochs.", stacklevel=2)
    with strategy.scope():
        net = UGACH(bits=bits, input_shape=images.shape[1:], vocabulary_size=texts.shape[1],
                    pretrain_steps=train["pretrain_epochs"] * (len(images) // batch_size), seed=seed, **model)
        net.adapt(images)
        net.compile(optimizer=keras.optimizers.Adam(train["learning_rate"]),
                    g_optimizer=keras.optimizers.Adam(train["g_learning_rate"]))
    features = net.image_features(images)  # computed once; the encoder passes them through
    graph = correlation_graph(features, texts.astype(np.float32), k=train["k"])
    held_out, _ = validation_rows(data.split, size=500, seed=0)
    keep = BestCheckpoint(lambda m: pair_retrieval_map(m.image_encoder, m.text_encoder, data.images[held_out],
                                                       data.texts[held_out]), name="val_pair_map")
    return TrainingPlan(net, graph_batches(features, texts, graph, batch_size, seed=seed), train["epochs"], [keep])
