"""SSAH: Self-Supervised Adversarial Hashing (Li, Deng, Li, Liu, Gao, Tao; CVPR 2018).

Supervised, image-text. Three networks map labels, images and texts to a
semantic feature F (512-d), a hash output H (tanh, K) and a label prediction
(sigmoid, c):

- `LabNet`: multi-hot labels -> 4096 -> F -> (H, labels). It learns first,
  from label pairs alone, and then supervises the other two.
- `SSAHImageEncoder` (ImgNet): image trunk -> F -> (H, labels).
- `SSAHTextEncoder` (TxtNet): bag of words -> `MultiScaleFusion` -> 4096 -> F -> (H, labels).

With S_ij = 1 when items i, j share a label, Delta_ij = <F_i, F_j> / 2 and
Gamma_ij = <H_i, H_j> / 2, each network minimizes

    alpha * J1 + gamma * J2 + eta * J3 + beta * J4 (+ delta * adversarial)
    J1 = -sum_j (S_ij Delta_ij - log(1 + e^Delta_ij)),  J2 = the same with Gamma,
    J3 = |B_i - H_i|^2,  J4 = |l_i - l_hat_i|^2

where for ImgNet and TxtNet j runs over LabNet's (F, H) of the training set.
Two discriminators tell image features, and text features, from label
features; ImgNet and TxtNet learn to fool them. Training alternates as the
official TensorFlow code does: LabNet for `label_epochs`, then ImgNet with its
discriminator for `image_epochs`, then TxtNet with its discriminator for
`text_epochs` (one *round*), then B = sign(H_v + H_t + H_l) over the training
set. `SSAH.fit` drives this with `SSAHRounds`, one phase per epoch.

Choices, one line each (against github.com/lelan-li/SSAH, to follow the paper's math):
- J1/J2: the negative log-likelihood softplus(theta) - S * theta (the code: an L2 distance between the two).
- Adversarial loss: back-propagated into ImgNet/TxtNet (the code feeds stored features, so they never get it).
- J3: towards B = sign(H_v + H_t + H_l) from round 2; in round 1 towards sign(H) (the code: every round).
- Scale: each term the paper's sum for one item (J1/J2 over the training set), averaged over the batch.
- Pair weights: `balanced=True` weighs similar and dissimilar pairs equally in J1/J2; the paper does not.
- Discriminators: F -> 256 -> 1 (the code; the paper: 4096 -> 4096 -> 1).
- Image trunk: "small_cnn" from scratch (the paper: CNN-F or VGG19, pretrained).
- Repeatability: `fit` turns Grappler's constant folding off for its steps (`SSAH.grappler_options`).

Defaults (the official code's): bits 32, phases 10 / 15 / 15 epochs, all loss
weights 1, Adam learning rates 1e-2 (LabNet), 10^-4.5 (ImgNet), 10^-3.5
(TxtNet), 1e-3 (discriminators), multiplied by 10^-0.5 a round; F 512, hidden
4096; balanced False. The recipes (`ssah_open_clip_art_32`, `_64`) use 5 / 5 / 5
epochs, 3 rounds, image and text rates 1e-3 and balanced pairs.
What was measured: docs/methods/ssah.md.

Only the two modality encoders are exported; LabNet and the discriminators
are the training harness.
"""

import warnings

import keras
import tensorflow as tf
from keras import layers, ops

from tfhash.layers import check_bits
from tfhash.losses import balanced_pair_weights, pairwise_likelihood, real_fake
from tfhash.models.base import (
    BowEncoder,
    ImageArguments,
    ImageHashModel,
    Trainer,
    TrainingPlan,
    finish_construction,
    gather_across_replicas,
    record_losses,
    with_grappler_options,
)

PHASES = ("label", "image", "text")
# The official code's learning rates (Adam): 10^-2, 10^-4.5, 10^-3.5, 10^-3.
LEARNING_RATES = {"label": 1e-2, "image": 10**-4.5, "text": 10**-3.5, "discriminator": 1e-3}


def _semantic_head(bits, num_labels, feature_units, name):
    """F (ReLU) -> H (tanh, K) and label prediction (sigmoid, c), shared by the three nets."""
    return {
        "feature": layers.Dense(feature_units, activation="relu", name=f"{name}_feature"),
        "hash": layers.Dense(bits, activation="tanh", name=f"{name}_hash"),
        "label": layers.Dense(num_labels, activation="sigmoid", name=f"{name}_label"),
    }


def _head_outputs(head, x):
    features = head["feature"](x)
    return features, head["hash"](features), head["label"](features)


def _build_head(head, input_dim, feature_units):
    head["feature"].build((None, input_dim))
    head["hash"].build((None, feature_units))
    head["label"].build((None, feature_units))


@keras.saving.register_keras_serializable(package="tfhash")
class LabNet(keras.Model):
    """SSAH's self-supervised semantic network: labels -> (F, H, predicted labels).

    Args:
        bits: code length K.
        num_labels: c, the length of the multi-hot label vectors.
        hidden_units: width of the first layer (paper: 4096).
        feature_units: width of the semantic feature F (paper: 512).
    """

    def __init__(self, bits=32, num_labels=24, hidden_units=4096, feature_units=512, **kwargs):
        super().__init__(**kwargs)
        check_bits(bits)
        self.bits, self.num_labels = bits, int(num_labels)
        self.hidden_units, self.feature_units = int(hidden_units), int(feature_units)
        self.hidden = layers.Dense(self.hidden_units, activation="relu", name="hidden")
        self.head = _semantic_head(bits, self.num_labels, self.feature_units, "lab")
        finish_construction(self, LabNet)

    def build(self, input_shape=None):
        if self.built:
            return
        self.hidden.build((None, self.num_labels))
        _build_head(self.head, self.hidden_units, self.feature_units)
        self.built = True

    def call(self, labels, training=False):
        return _head_outputs(self.head, self.hidden(ops.cast(labels, self.compute_dtype)))

    def get_config(self):
        return {
            **super().get_config(),
            "bits": self.bits,
            "num_labels": self.num_labels,
            "hidden_units": self.hidden_units,
            "feature_units": self.feature_units,
        }


@keras.saving.register_keras_serializable(package="tfhash")
class SSAHImageEncoder(ImageHashModel):
    """SSAH's ImgNet: raw images -> trunk -> F -> H. `call` gives H, the relaxed code.

    Args:
        num_labels: c, for the label-prediction head used in training.
        feature_units: width of F.
        **kwargs: `ImageArguments` (bits, input_shape, the trunk; the paper's: CNN-F or VGG19) and Keras's.
    """

    def __init__(self, num_labels=24, feature_units=512, **kwargs):
        super().__init__(**kwargs)
        self.num_labels, self.feature_units = int(num_labels), int(feature_units)
        self.head = _semantic_head(self.bits, self.num_labels, self.feature_units, "img")
        finish_construction(self, SSAHImageEncoder)

    def build(self, input_shape=None):
        if self.built:
            return
        super().build()
        _build_head(self.head, self.feature_shape[-1], self.feature_units)

    def semantics(self, images, training=False):
        """(F, H, predicted labels) of a batch of raw images."""
        return _head_outputs(self.head, self.backbone(images, training=training))

    def call(self, images, training=False):
        return self.semantics(images, training=training)[1]

    def get_config(self):
        return {
            **super().get_config(),
            "num_labels": self.num_labels,
            "feature_units": self.feature_units,
        }


@keras.saving.register_keras_serializable(package="tfhash")
class MultiScaleFusion(keras.layers.Layer):
    """SSAH's text block: a bag of words seen at several scales, fused by a 1x1 conv.

    The BoW vector (V,) is average-pooled over windows of each size in
    `scales` (stride = window), each pooled map passes a 1x1 conv and is
    upsampled back to V (nearest; the official code resizes bilinearly); the
    maps and the input are stacked as channels and a 1x1 conv fuses them into
    one value per word. Output: (batch, V). The official code puts a ReLU
    after each single-channel conv; here they are linear (a one-channel ReLU
    that starts negative is dead for every word, and TxtNet then never
    learns), and the next Dense layer has the ReLU.

    Args:
        scales: pooling window sizes (paper: 1, 2, 3, 5, 10).
    """

    def __init__(self, scales=(1, 2, 3, 5, 10), **kwargs):
        super().__init__(**kwargs)
        self.scales = tuple(int(s) for s in scales)
        if not self.scales or min(self.scales) < 1:
            raise ValueError(f"scales must be positive window sizes. Received: scales={scales}")
        self.pools = [layers.AveragePooling1D(s, strides=s, padding="same") for s in self.scales]
        # Linear 1x1 convs: with one output channel a ReLU dies for every word
        # at once (as often as not at initialization) and TxtNet learns nothing.
        self.convs = [layers.Conv1D(1, 1, name=f"scale_{s}") for s in self.scales]
        self.fuse = layers.Conv1D(1, 1, name="fuse")

    def build(self, input_shape):
        length = input_shape[-1]
        for scale, conv in zip(self.scales, self.convs):
            conv.build((None, -(-length // scale) if length else None, 1))
        self.fuse.build((None, length, len(self.scales) + 1))

    def call(self, bow):
        length = ops.shape(bow)[-1]
        x = ops.expand_dims(bow, -1)  # (batch, V, 1): words as a 1-D signal
        maps = [x]
        for scale, pool, conv in zip(self.scales, self.pools, self.convs):
            pooled = conv(pool(x))
            maps.append(ops.repeat(pooled, scale, axis=1)[:, :length])
        return ops.squeeze(self.fuse(ops.concatenate(maps, axis=-1)), -1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scales": self.scales}


@keras.saving.register_keras_serializable(package="tfhash")
class SSAHTextEncoder(BowEncoder):
    """SSAH's TxtNet: bag of words (V,) -> multi-scale fusion -> 4096 -> F -> H.

    Its serving input is `bow`: float32 (None, V), a bag-of-words vector over
    the vocabulary the model was trained with.

    Args:
        bits: code length K (multiple of 8).
        num_labels: c, for the label-prediction head used in training.
        vocabulary_size: V.
        hidden_units: width after the fusion block (paper: 4096).
        feature_units: width of F.
        scales: `MultiScaleFusion` windows.
    """

    def __init__(
        self,
        bits=32,
        num_labels=24,
        vocabulary_size=1386,
        hidden_units=4096,
        feature_units=512,
        scales=(1, 2, 3, 5, 10),
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_bits(bits)
        self.bits, self.num_labels = bits, int(num_labels)
        self.vocabulary_size = int(vocabulary_size)
        self.hidden_units, self.feature_units = int(hidden_units), int(feature_units)
        self.fusion = MultiScaleFusion(scales, name="multi_scale_fusion")
        self.hidden = layers.Dense(self.hidden_units, activation="relu", name="hidden")
        self.head = _semantic_head(bits, self.num_labels, self.feature_units, "txt")
        finish_construction(self, SSAHTextEncoder)

    def build(self, input_shape=None):
        if self.built:
            return
        self.fusion.build((None, self.vocabulary_size))
        self.hidden.build((None, self.vocabulary_size))
        _build_head(self.head, self.hidden_units, self.feature_units)
        self.built = True

    def semantics(self, bow, training=False):
        """(F, H, predicted labels) of a batch of bag-of-words vectors."""
        return _head_outputs(self.head, self.hidden(self.fusion(ops.cast(bow, self.compute_dtype))))

    def call(self, bow, training=False):
        return self.semantics(bow, training=training)[1]

    def get_config(self):
        return {
            **super().get_config(),
            "bits": self.bits,
            "num_labels": self.num_labels,
            "vocabulary_size": self.vocabulary_size,
            "hidden_units": self.hidden_units,
            "feature_units": self.feature_units,
            "scales": self.fusion.scales,
        }


def _discriminator(feature_units, hidden_units, name):
    """F -> hidden (ReLU) -> logit; "1" means the feature came from LabNet."""
    return keras.Sequential(
        [keras.Input((feature_units,)), layers.Dense(hidden_units, activation="relu"), layers.Dense(1)],
        name=name,
    )


@keras.saving.register_keras_serializable(package="tfhash")
class SSAH(ImageArguments, Trainer):
    """The SSAH training harness: LabNet, ImgNet, TxtNet, two discriminators.

    Each phase's step, for a batch of (image, text, labels, index) rows:

        loss_i = alpha * J1 + gamma * J2 + eta * J3 + beta * J4 (+ delta * adversarial)

    with J1 = sum_j nll(S_ij, <F^l_j, F_i> / 2) and J2 the same on H, j over
    the whole training set (LabNet's features and codes for the training set
    are kept in `memory`, refreshed as LabNet's batches pass), S_ij = 1 when
    the items share a label; J3 = sum_k (B_ik - H_ik)^2; J4 = sum_c
    (l_ic - predicted_ic)^2. The image and text phases first train their
    discriminator (LabNet features -> 1, their own -> 0), then the network
    with the adversarial loss -log D(F_i). Rows of the memory written in a
    step are gathered from every replica, so MirroredStrategy takes the steps
    one device takes.

    Args:
        num_labels: c.
        vocabulary_size: V, the bag-of-words length.
        num_train: N, training-set size (rows of the memory; `index` values
            in the data must lie in [0, N)).
        hidden_units: width of LabNet's and TxtNet's first layer (paper: 4096).
        feature_units: width of F (paper: 512).
        discriminator_units: hidden width of the discriminators (code: 256).
        label_epochs, image_epochs, text_epochs: epochs of each phase in a
            round (code: 10, 15, 15).
        alpha, gamma, eta, beta, delta: weights of J1, J2, J3, J4 and the
            adversarial loss (code: all 1).
        decay: learning rates are multiplied by this after each round (code: 10^-0.5).
        balanced: weigh similar pairs T / P and dissimilar ones 1 in J1/J2
            (`tfhash.losses.balanced_pair_weights`; the paper does not). With few similar pairs (digits: 10%), ReLU
            features F are pushed to 0 for every pair, and the codes computed
            from them collapse. The published recipes set it.
        **kwargs: `ImageArguments` (bits K, input_shape and ImgNet's trunk) and Keras's.

    Examples:
    >>> model = SSAH(bits=32, num_labels=c, vocabulary_size=v, num_train=len(train_labels))
    >>> model.compile()  # the paper's Adam learning rates
    >>> model.fit(cross_modal_batches(images, texts, labels, 64), epochs=2 * model.round_epochs)
    >>> model.image_encoder.encode(images), model.text_encoder.encode(texts)
    """

    loss_names = ("label_loss",) + tuple(
        f"{m}_{part}" for m in ("image", "text") for part in ("loss", "adversarial_loss", "d_loss")
    )
    optimizer_roles = {
        role: (lambda rate=rate: keras.optimizers.Adam(rate))
        for role, rate in (
            ("optimizer", LEARNING_RATES["label"]),
            ("image_optimizer", LEARNING_RATES["image"]),
            ("text_optimizer", LEARNING_RATES["text"]),
            ("d_optimizer", LEARNING_RATES["discriminator"]),
        )
    }

    def __init__(self, num_labels=24, vocabulary_size=1386, num_train=10000, hidden_units=4096, feature_units=512,
                 discriminator_units=256, label_epochs=10, image_epochs=15, text_epochs=15, alpha=1.0, gamma=1.0,
                 eta=1.0, beta=1.0, delta=1.0, decay=10**-0.5, balanced=False, **kwargs):
        super().__init__(**kwargs)
        bits = self.image_arguments["bits"]
        self.balanced = bool(balanced)
        for name, value in (("label_epochs", label_epochs), ("image_epochs", image_epochs), ("text_epochs", text_epochs), ("num_train", num_train)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")
        self.bits, self.num_labels, self.num_train = bits, int(num_labels), int(num_train)
        self.feature_units, self.discriminator_units = int(feature_units), int(discriminator_units)
        self.epochs_per_phase = {"label": label_epochs, "image": image_epochs, "text": text_epochs}
        self.weights_ = dict(alpha=float(alpha), gamma=float(gamma), eta=float(eta), beta=float(beta), delta=float(delta))
        self.decay = float(decay)
        self.lab_net = LabNet(bits, num_labels, hidden_units, feature_units, name="lab_net")
        self.image_encoder = SSAHImageEncoder(num_labels=num_labels, feature_units=feature_units,
                                              **self.image_arguments, name="image_encoder")
        self.text_encoder = SSAHTextEncoder(bits=bits, num_labels=num_labels, vocabulary_size=vocabulary_size,
                                            hidden_units=hidden_units, feature_units=feature_units,
                                            name="text_encoder")
        self.discriminators = {
            "image": _discriminator(self.feature_units, self.discriminator_units, "image_discriminator"),
            "text": _discriminator(self.feature_units, self.discriminator_units, "text_discriminator"),
        }
        self.phase = "label"
        self._phase_functions = {}
        finish_construction(self, SSAH)

    @property
    def round_epochs(self):
        """Epochs in one round (label + image + text phases)."""
        return sum(self.epochs_per_phase.values())

    def short_run(self, epochs):
        """What `epochs` leaves out when it is shorter than one round, in one line
        (None for a round or more): the networks train one at a time, so a
        shorter run saves encoders that never trained, or never reaches the
        unified codes B."""
        if epochs >= self.round_epochs:
            return None
        starts = dict(zip(PHASES, (0, self.epochs_per_phase["label"],
                                   self.epochs_per_phase["label"] + self.epochs_per_phase["image"])))
        untrained = [phase for phase in ("image", "text") if starts[phase] >= epochs]
        if untrained:
            what = (f"the {' and '.join(untrained)} encoder{'s' if len(untrained) > 1 else ''} "
                    f"{'are' if len(untrained) > 1 else 'is'} never trained (saved untrained)")
        else:
            what = (f"the text encoder trains {epochs - starts['text']} of its {self.epochs_per_phase['text']} "
                    "epochs and the unified codes are never computed")
        phases = ", then ".join(f"{phase} {self.epochs_per_phase[phase]}" for phase in PHASES)
        return (f"SSAH: epochs={epochs} is shorter than one round ({self.round_epochs} epochs: {phases}, one network "
                f"at a time), so {what}. Train at least {self.round_epochs} epochs.")

    def phase_of_epoch(self, epoch):
        """The phase an epoch trains, and whether it ends a round."""
        position = epoch % self.round_epochs
        for phase in PHASES:
            if position < self.epochs_per_phase[phase]:
                return phase, phase == "text" and position == self.epochs_per_phase[phase] - 1
            position -= self.epochs_per_phase[phase]

    def build(self, input_shape=None):
        if self.built:
            return
        for net in (self.lab_net, self.image_encoder, self.text_encoder):
            if not net.built:
                net.build()
        for d in self.discriminators.values():
            d.build((None, self.feature_units))
        n = self.num_train

        def memory(name, width):
            # Written from gathered rows, identical on every replica: keep replica 0's write.
            return self.add_weight(
                shape=(n, width), initializer="zeros", trainable=False, name=name,
                aggregation="only_first_replica",
            )

        self.memory = {
            "labels": memory("memory_labels", self.num_labels),
            "filled": memory("memory_filled", 1),  # 1 once a row's labels are known
            "label_features": memory("memory_label_features", self.feature_units),
            "label_codes": memory("memory_label_codes", self.bits),
            "image_codes": memory("memory_image_codes", self.bits),
            "text_codes": memory("memory_text_codes", self.bits),
            "unified_codes": memory("memory_unified_codes", self.bits),  # B; 0 until the first round ends
        }
        self.built = True

    def call(self, inputs, training=False):
        return {
            "image_codes": self.image_encoder(inputs["images"], training=training),
            "text_codes": self.text_encoder(inputs["texts"], training=training),
        }

    def compile(self, **kwargs):
        """One optimizer per network: `optimizer` (LabNet), `image_optimizer`,
        `text_optimizer`, `d_optimizer` (copied, so each discriminator keeps its
        own moments); defaults: Adam at the official code's learning rates."""
        super().compile(**kwargs)
        self.optimizers = {"label": self.optimizer, "image": self.image_optimizer, "text": self.text_optimizer}
        d = self.d_optimizer
        self.d_optimizers = {"image": d, "text": d.__class__.from_config(d.get_config())}

    def encoders(self):
        return {"image": self.image_encoder, "text": self.text_encoder}

    def _phase_variables(self, phase):
        return {"label": self.lab_net, "image": self.image_encoder, "text": self.text_encoder}[phase].trainable_variables

    def optimizer_variables(self):
        return [(self.optimizers[p], self._phase_variables(p)) for p in PHASES] + [
            (self.d_optimizers[m], self.discriminators[m].trainable_variables) for m in ("image", "text")
        ]

    # Constant folding off makes runs repeat (see the module docstring); set {}
    # for TensorFlow's defaults.
    grappler_options = {"constant_folding": False}

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, with `SSAHRounds` added to drive the phases, and
        `SSAH.grappler_options` (constant folding off, so runs repeat) for its steps.
        Fewer epochs than one round warn (`short_run`): some network would never train."""
        reason = self.short_run(kwargs.get("epochs", 1))
        if reason:
            warnings.warn(reason, stacklevel=2)
        callbacks = list(callbacks or [])
        if not any(isinstance(c, SSAHRounds) for c in callbacks):
            callbacks.insert(0, SSAHRounds())
        with with_grappler_options(self.grappler_options):
            return super().fit(*args, callbacks=callbacks, **kwargs)

    def set_phase(self, phase):
        """Switches the compiled train step to `phase` ("label", "image" or "text")."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}. Received: phase={phase!r}")
        self.phase = phase
        # One compiled step per phase, traced on first use: the phase is a
        # Python value read at trace time, so each function holds one branch.
        if phase not in self._phase_functions:
            self.make_train_function(force=True)
            self._phase_functions[phase] = self.train_function
        self.train_function = self._phase_functions[phase]

    def _write_memory(self, index, **rows):
        """Writes the gathered batch rows into the memory (identically on every replica)."""
        index = tf.cast(index, "int32")[:, None]
        for name, value in rows.items():
            variable = self.memory[name]
            variable.assign(tf.tensor_scatter_nd_update(variable.value, index, tf.cast(value, variable.dtype)))

    def _pair_terms(self, features, codes, labels, labels_all):
        """J1 and J2 per row: the batch's (F, H) against LabNet's memory of the
        training set; `labels_all` is the global batch's (for the balance counts)."""
        memory_labels = self.memory["labels"].value
        filled = tf.transpose(self.memory["filled"].value)  # (1, N); rows not seen yet weigh 0

        def similarity(rows):
            return tf.cast(tf.matmul(rows, memory_labels, transpose_b=True) > 0, features.dtype)

        s = similarity(labels)
        theta_f = 0.5 * tf.matmul(features, self.memory["label_features"].value, transpose_b=True)
        theta_h = 0.5 * tf.matmul(codes, self.memory["label_codes"].value, transpose_b=True)
        weights = filled
        if self.balanced:
            # Counted over the global batch's pairs with the known memory rows.
            weights = balanced_pair_weights(s, similarity(labels_all), known=filled)
        j1 = tf.reduce_sum(pairwise_likelihood(theta_f, s) * weights, axis=1)
        j2 = tf.reduce_sum(pairwise_likelihood(theta_h, s) * weights, axis=1)
        return j1, j2

    def _quantization_target(self, index, codes):
        b = tf.gather(self.memory["unified_codes"].value, tf.cast(index, "int32"))
        # Before the first round ends B is 0: use the codes' own signs (the official code).
        return tf.where(tf.equal(b, 0.0), tf.sign(tf.stop_gradient(codes)), b)

    def train_step(self, data):
        images, texts = data["images"], data["texts"]
        labels, index = tf.cast(data["labels"], self.compute_dtype), tf.cast(data["index"], self.compute_dtype)
        w = self.weights_
        index_all, labels_all = gather_across_replicas(index, labels)
        global_batch = tf.shape(index_all)[0]
        squared = lambda a, b: tf.reduce_sum(tf.square(a - b), axis=-1)  # noqa: E731

        if self.phase == "label":
            with tf.GradientTape() as tape:
                features, codes, predicted = self.lab_net(labels, training=True)
                # The batch's current outputs join the memory before the loss, as in the code.
                f_all, h_all = gather_across_replicas(tf.stop_gradient(features), tf.stop_gradient(codes))
                self._write_memory(
                    index_all, labels=labels_all, filled=tf.ones_like(index_all)[:, None],
                    label_features=f_all, label_codes=h_all,
                )
                j1, j2 = self._pair_terms(features, codes, labels, labels_all)
                j3 = squared(self._quantization_target(index, codes), codes)
                j4 = squared(labels, predicted)
                per_example = w["alpha"] * j1 + w["gamma"] * j2 + w["eta"] * j3 + w["beta"] * j4
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            variables = self.lab_net.trainable_variables
            self.optimizers["label"].apply(tape.gradient(loss, variables), variables)
            return record_losses(self, label_loss=per_example)

        modality = self.phase
        net = self.image_encoder if modality == "image" else self.text_encoder
        inputs = images if modality == "image" else texts
        discriminator = self.discriminators[modality]
        label_features = tf.stop_gradient(self.lab_net(labels, training=False)[0])

        # Train the discriminator: LabNet features -> 1, this modality's -> 0.
        with tf.GradientTape() as tape:
            own = tf.stop_gradient(net.semantics(inputs, training=True)[0])
            real_logit, fake_logit = discriminator(label_features, training=True), discriminator(own, training=True)
            d_per_example = real_fake(real_logit[:, 0], True) + real_fake(fake_logit[:, 0], False)
            d_loss = tf.nn.compute_average_loss(d_per_example, global_batch_size=global_batch)
        d_vars = discriminator.trainable_variables
        self.d_optimizers[modality].apply(tape.gradient(d_loss, d_vars), d_vars)

        # Train the network under LabNet's supervision, fooling the discriminator.
        with tf.GradientTape() as tape:
            features, codes, predicted = net.semantics(inputs, training=True)
            j1, j2 = self._pair_terms(features, codes, labels, labels_all)
            j3 = squared(self._quantization_target(index, codes), codes)
            j4 = squared(labels, predicted)
            logit = discriminator(features, training=False)
            adversarial = real_fake(logit[:, 0], True)
            per_example = (
                w["alpha"] * j1 + w["gamma"] * j2 + w["eta"] * j3 + w["beta"] * j4 + w["delta"] * adversarial
            )
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        variables = net.trainable_variables
        self.optimizers[modality].apply(tape.gradient(loss, variables), variables)

        (codes_all,) = gather_across_replicas(tf.stop_gradient(codes))
        self._write_memory(index_all, **{f"{modality}_codes": codes_all})
        return record_losses(
            self,
            **{f"{modality}_loss": per_example, f"{modality}_adversarial_loss": adversarial,
               f"{modality}_d_loss": d_per_example},
        )

    def update_unified_codes(self):
        """B = sign(H_l + H_v + H_t) over the training set, from the memory (end of a round)."""
        total = sum(self.memory[f"{m}_codes"].value for m in PHASES)
        self.memory["unified_codes"].assign(tf.sign(total))

    def get_config(self):
        return {
            **super().get_config(),
            "bits": self.bits,
            "num_labels": self.num_labels,
            "vocabulary_size": self.text_encoder.vocabulary_size,
            "num_train": self.num_train,
            "input_shape": self.image_encoder.image_shape,
            **self.image_encoder.trunk_arguments(),
            "hidden_units": self.lab_net.hidden_units,
            "feature_units": self.feature_units,
            "discriminator_units": self.discriminator_units,
            "label_epochs": self.epochs_per_phase["label"],
            "image_epochs": self.epochs_per_phase["image"],
            "text_epochs": self.epochs_per_phase["text"],
            **self.weights_,
            "decay": self.decay,
            "balanced": self.balanced,
        }


class SSAHRounds(keras.callbacks.Callback):
    """Runs SSAH's alternation inside `fit`: one phase per epoch, rounds of
    `label_epochs` + `image_epochs` + `text_epochs`. At the end of a round it
    sets B = sign(H_l + H_v + H_t) and decays the learning rates, and logs
    "round" (the number of rounds completed) in that epoch's logs.
    `SSAH.fit` adds it when the callbacks passed hold none.
    """

    def on_epoch_begin(self, epoch, logs=None):
        phase, _ = self.model.phase_of_epoch(epoch)
        self.model.set_phase(phase)

    def on_epoch_end(self, epoch, logs=None):
        _, ends_round = self.model.phase_of_epoch(epoch)
        if not ends_round:
            return
        model = self.model
        with model.distribute_strategy.scope():
            model.update_unified_codes()
            if model.decay != 1.0:
                for optimizer in [*model.optimizers.values(), *model.d_optimizers.values()]:
                    optimizer.learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate)) * model.decay
        if logs is not None:
            logs["round"] = (epoch + 1) // model.round_epochs


def training_plan(data, *, bits, seed, strategy, model, train):
    """SSAH on an image-text protocol's training split (the registry's `plan`).
    The round with the best validation mAP (held-out database items against
    the training set, never the queries) is kept. A frozen ImageNet trunk's
    features are computed once (`trunk_inputs`)."""
    from tfhash.callbacks import BestCheckpoint
    from tfhash.data import cross_modal_batches
    from tfhash.evaluation import evaluate_cross_modal, validation_rows
    from tfhash.models.backbones import trunk_inputs

    images, texts, labels = data.subset("train")
    with strategy.scope():
        net = SSAH(bits=bits, num_labels=labels.shape[1], vocabulary_size=texts.shape[1], num_train=len(labels),
                   input_shape=images.shape[1:], **model)
        net.compile(image_optimizer=keras.optimizers.Adam(train["image_learning_rate"]),
                    text_optimizer=keras.optimizers.Adam(train["text_learning_rate"]))
    queries, database = validation_rows(data.split, size=500, seed=0)

    def rows(index):
        return data.images[index], data.texts[index], data.labels[index]

    def validation(m):
        r = evaluate_cross_modal(m.image_encoder, m.text_encoder, rows(queries), rows(database))
        return (r["image_to_text"]["map"] + r["text_to_image"]["map"]) / 2

    epochs = train["epochs"] if train["epochs"] is not None else 3 * net.round_epochs
    inputs = trunk_inputs(images, **model)
    return TrainingPlan(net, cross_modal_batches(inputs, texts, labels, train["batch_size"], seed=seed), epochs,
                [SSAHRounds(), BestCheckpoint(validation, name="val_map", every="round")])
