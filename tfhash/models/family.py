"""The pairwise family: supervised image hashing from label pairs (DHN, DPSH, ...).

A member is a trunk, a hash head and loss terms over pairs: each image of the
batch against every image of the global batch (gathered across replicas),
s_ij = 1 when the two share a label. `PairwiseHashModel` writes the step,
`test_step`, `encoders`, the config and the training plan; a member writes its
loss terms, their weights and its defaults (constructor arguments):

    @keras.saving.register_keras_serializable(package="tfhash")
    class Toy(PairwiseHashModel):
        term_weights = {"pairwise_loss": 1.0, "quantization_loss": "quantization_weight"}

        def __init__(self, quantization_weight=0.1, **kwargs):
            super().__init__(**kwargs)
            self.quantization_weight = float(quantization_weight)
            finish_construction(self, Toy)

        def loss_terms(self, codes, labels, all_codes, all_labels, batch):
            return {"pairwise_loss": PairwiseCrossEntropy()(codes, labels, all_codes, all_labels),
                    "quantization_loss": QuantizationLoss()(codes)}

The step minimizes, over the rows i of the global batch of n,

    (1 / n) sum_i sum_t w_t * term_t(i)

Choices, one line each:
- Columns: the global batch's codes, held constant (DeepHash-pytorch's code memory): a replica differentiates its rows.
- Normalization: divided by the global batch (`tf.nn.compute_average_loss`), so N replicas take one device's steps.
- Weights: `term_weights` maps each term to a constructor attribute's name or a constant.
- Trackers: "loss" (the weighted sum) and one per term, per-example means of the global batch.
- Head: `HashLayer`, `activation` "tanh" (default), "identity" or "sign" (straight-through).
- Config: every `__init__` argument from the member down to this class, kept as the attribute of its name;
  the trunk's are `ImageHashModel`'s.
- Plan: Adam(learning_rate) and `tfhash.data.batches` of the class's `fields`; a frozen ImageNet trunk's
  features computed once (`trunk_inputs`).
- Per-sample memory (DPSH's U, DSDH's B): a `MemoryPairs` member may pair the batch with `CodeMemory`'s rows
  instead (its `memory` option, `pair_columns`), addressed by the batch's "index" field.
- Fixed target codes (CSQ's hash centers, OrthoHash's class codes): `hadamard_codes`, rows of [H; -H].
- A row's pair with itself: `other_columns` masks the global batch's column that is the row itself.
"""

import keras
import numpy as np
import tensorflow as tf
from scipy.linalg import hadamard

from tfhash.layers import HashLayer
from tfhash.models.base import (
    ImageHashModel,
    Trainer,
    TrainingPlan,
    finish_construction,
    gather_across_replicas,
    init_parameters,
    record_losses,
)


def other_columns(rows, columns, dtype="float32"):
    """(rows, columns) 0/1: 0 where column j of the global batch is this replica's row i itself, else 1.

    The global batch is the replicas' rows in replica order (`gather_across_replicas`), each
    replica `rows` of them: batches are full (`tfhash.data.batches`). On one device, 1 - I.
    """
    context = tf.distribute.get_replica_context()
    replica = context.replica_id_in_sync_group if context is not None else 0
    start = tf.cast(replica, "int32") * rows
    return 1.0 - tf.one_hot(start + tf.range(rows), columns, dtype=dtype)


def hadamard_codes(count, bits):
    """The first `count` (at most 2K) rows of [H; -H], H Sylvester's K x K Hadamard matrix
    (`scipy.linalg.hadamard`, K = `bits` a power of 2): codes in {-1, +1}^K (int) at Hamming distance
    K/2 or K from each other. CSQ's hash centers and OrthoHash's "hadamard" class codes."""
    h = hadamard(bits)
    return np.concatenate([h, -h])[:count]


class TrainingState(keras.layers.Layer):
    """A layer holding training state (`CodeMemory`, DSDH's `DiscreteCodes`): zero-initialized,
    non-trainable weights, written identically on every replica, and not saved with the model (a
    loaded model starts them at 0)."""

    def state(self, name, shape):
        """A weight of this state, zeros (`shape`)."""
        # Written alike on every replica (from gathered rows, or by a callback): keep replica 0's write.
        return self.add_weight(shape=shape, initializer="zeros", trainable=False, name=name,
                               aggregation="only_first_replica")

    def save_own_variables(self, store):
        pass  # training state: not saved with the model

    def load_own_variables(self, store):
        pass


@keras.saving.register_keras_serializable(package="tfhash")
class CodeMemory(TrainingState):
    """A per-sample memory of the training set: each row's latest code and label
    (U and Y in DPSH's reference code), written from the global batch each step.

    `memory(index, all_codes, all_labels)` writes the global batch's rows (the
    index gathered across replicas, every replica writing the same rows) and
    returns every row's (codes, labels), for a loss that pairs the batch with
    the training set. A row not yet written has code 0 (no gradient, as in the
    reference code) and label 0. It is training state, not the model's: a
    saved model leaves it out, and a loaded one starts it empty.

    Args:
        rows: N, the training rows (the "index" field's values lie in [0, N)).
        bits: code length K.
        label_shape: a label's shape: () for class ids, (c,) for multi-hot.

    Examples:
    >>> self.code_memory = CodeMemory(num_train, self.bits, label_shape)  # in a member's __init__
    >>> all_codes, all_labels = self.code_memory(batch["index"], all_codes, all_labels)  # in its loss_terms
    """

    def __init__(self, rows, bits, label_shape=(), **kwargs):
        super().__init__(**kwargs)
        self.rows, self.bits, self.label_shape = int(rows), int(bits), tuple(int(d) for d in label_shape)
        self.codes = self.state("codes", (self.rows, self.bits))
        self.labels = self.state("labels", (self.rows, *self.label_shape))
        self.built = True

    def call(self, index, all_codes, all_labels):
        (all_index,) = gather_across_replicas(index)
        rows = tf.cast(all_index, "int32")[:, None]
        for variable, values in ((self.codes, all_codes), (self.labels, all_labels)):
            variable.assign(tf.tensor_scatter_nd_update(variable.value, rows, tf.cast(values, variable.dtype)))
        return tf.cast(self.codes.value, all_codes.dtype), tf.cast(self.labels.value, all_labels.dtype)

    def get_config(self):
        return {**super().get_config(), "rows": self.rows, "bits": self.bits, "label_shape": self.label_shape}


class PairwiseHashModel(Trainer, ImageHashModel):
    """Base of the pairwise family: a trunk, `HashLayer` and per-example loss terms.

    A member sets:
        term_weights: {term name: weight}, in the order `loss_terms` returns the
            terms; a weight is a constructor attribute's name (e.g.
            "quantization_weight") or a constant. The trackers are "loss" and these.
        fields: the batch fields its step reads (`tfhash.data.batches`):
            ("images", "labels") by default; `MemoryPairs` adds "index".
        loss_terms(codes, labels, all_codes, all_labels, batch): {term name:
            per-example tensor (rows,)}. `codes` (rows, K) are this replica's, with
            gradient; `all_codes` and `all_labels` the global batch's, codes held
            constant; `batch` the fields by name, this replica's rows.
        its constructor arguments, each kept as the attribute of its name, its
            `__init__` taking the rest through `**kwargs` and ending with
            `finish_construction(self, Member)`.

    A batch is a dict of fields (`tfhash.data.batches`) or a tuple of them in
    `fields` order (`fit(images, labels)`).

    Args:
        activation: the hash head's, "tanh", "identity" or "sign" (`HashLayer`).
        **kwargs: `ImageArguments` (bits, input_shape, the trunk) and Keras's.
    """

    term_weights = {}
    fields = ("images", "labels")
    loss_names = ("loss",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.loss_names = ("loss", *cls.term_weights)

    def __init__(self, activation="tanh", **kwargs):
        super().__init__(**kwargs)
        self.activation = activation
        self.hash_layer = HashLayer(self.bits, activation=activation, name="hash")
        finish_construction(self, PairwiseHashModel)

    def build(self, input_shape=None):
        if self.built:
            return
        missing = [name for name in self._config_arguments() if not hasattr(self, name)]
        if missing:
            raise ValueError(f"{type(self).__name__} takes {missing} but keeps no attribute of that name: the "
                             f"family's get_config returns each constructor argument as its attribute")
        super().build()
        self.hash_layer.build(self.feature_shape)

    def call(self, images, training=False):
        return self.hash_layer(self.backbone(images, training=training))

    def encoders(self):
        return {"image": self}

    def loss_terms(self, codes, labels, all_codes, all_labels, batch):
        """{term name: per-example loss (rows,)}, in `term_weights` order; see the class docstring."""
        raise NotImplementedError(f"{type(self).__name__} must define loss_terms")

    def named_fields(self, data):
        """A batch as {field: tensor}: a dict as it is, a tuple in `fields` order."""
        if not isinstance(data, dict):
            data = dict(zip(self.fields, data if isinstance(data, (tuple, list)) else (data,)))
        missing = [name for name in ("images", "labels") if name not in data]
        if missing:
            raise ValueError(f"{type(self).__name__} needs batch fields {list(self.fields)}. "
                             f"Received: {sorted(data)}")
        return data

    def _weighted_terms(self, data, training):
        """The step's loss (divided by the global batch) and {tracker: per-example values}."""
        batch = self.named_fields(data)
        codes = self(batch["images"], training=training)
        all_codes, all_labels = gather_across_replicas(codes, batch["labels"])
        labels = tf.cast(batch["labels"], all_labels.dtype)
        terms = self.loss_terms(codes, labels, tf.stop_gradient(all_codes), all_labels, batch)
        if list(terms) != list(self.term_weights):
            raise ValueError(f"{type(self).__name__}.loss_terms must return the terms of term_weights, in "
                             f"order: {list(self.term_weights)}. Received: {list(terms)}")
        weighted = []
        for name, term in terms.items():
            weight = self.term_weights[name]
            weight = getattr(self, weight) if isinstance(weight, str) else weight
            weighted.append(term if weight == 1 else weight * term)
        per_example = tf.add_n(weighted)
        # Divide by the global batch: the optimizer sums replicas' gradients.
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=tf.shape(all_codes)[0])
        if self.losses:
            loss += tf.nn.scale_regularization_loss(tf.add_n(self.losses))
        return loss, {"loss": per_example, **terms}

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, per_example = self._weighted_terms(data, training=True)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return record_losses(self, **per_example)

    def test_step(self, data):
        _, per_example = self._weighted_terms(data, training=False)
        return record_losses(self, **per_example)

    @classmethod
    def _config_arguments(cls):
        # The member's and the family's arguments; the trunk's are ImageHashModel's config.
        return list(init_parameters(cls, last=PairwiseHashModel))

    def get_config(self):
        return {**super().get_config(), **{name: getattr(self, name) for name in self._config_arguments()}}

    @classmethod
    def training_plan(cls, data, *, bits, seed, strategy, model, train):
        """The class on a protocol's labelled training split (the registry's `plan`):
        Adam(train["learning_rate"]), `tfhash.data.batches` of `cls.fields`, a
        frozen ImageNet trunk's features computed once (`trunk_inputs`). Of the
        arguments taken from the data (input_shape, num_train: the training
        rows, label_shape: a label's shape, num_classes: class ids' count or
        multi-hot width), the class gets those it takes."""
        from tfhash.data import batches
        from tfhash.models.backbones import trunk_inputs

        images, labels = data.subset("train")
        # num_classes: over every item's labels, not the training rows' (a class may miss from them).
        every = data.labels
        num_classes = every.shape[1] if every.ndim == 2 else int(every.max()) + 1
        derived = {"input_shape": images.shape[1:], "num_train": len(images), "label_shape": labels.shape[1:],
                   "num_classes": num_classes}
        taken = init_parameters(cls)
        with strategy.scope():
            net = cls(bits=bits, **{key: value for key, value in derived.items() if key in taken}, **model)
            net.compile(optimizer=keras.optimizers.Adam(train["learning_rate"]))
        inputs = trunk_inputs(images, **model)
        return TrainingPlan(net, batches(cls.fields, images=inputs, labels=labels, batch_size=train["batch_size"],
                                         seed=seed), train["epochs"])


class MemoryPairs(PairwiseHashModel):
    """A pairwise member with the option of pairing its rows with a memory of the training set
    (`CodeMemory`: every training row's latest code and label) instead of the global batch: DPSH's,
    DSH's, IDHN's and DSDH's. Its batches carry the "index" field; its `loss_terms` takes its columns
    from `pair_columns(batch, all_codes, all_labels)`. A member whose training reads the memory
    whatever `memory` says (DSDH's B-step) sets `keeps_memory = True`.

    Args:
        memory: pair each row with a memory of every training row's latest code
            and label (DeepHash-pytorch's) instead of the global batch.
        num_train: N, the training rows (with `memory`; taken from the data).
        label_shape: a label's shape, () or (c,) (with `memory`; taken from the data).
        **kwargs: `PairwiseHashModel`'s.
    """

    fields = ("images", "labels", "index")
    keeps_memory = False

    def __init__(self, memory=False, num_train=1, label_shape=(), **kwargs):
        super().__init__(**kwargs)
        self.memory, self.num_train, self.label_shape = bool(memory), int(num_train), tuple(label_shape)
        kept = self.memory or self.keeps_memory
        self.code_memory = CodeMemory(self.num_train, self.bits, self.label_shape, name="code_memory") if kept else None
        finish_construction(self, MemoryPairs)

    def pair_columns(self, batch, all_codes, all_labels):
        """The columns the batch's rows pair with: the global batch's codes and labels, or with `memory`
        every training row's latest (the memory written from the global batch first, whenever kept)."""
        if self.code_memory is None:
            return all_codes, all_labels
        remembered = self.code_memory(batch["index"], all_codes, all_labels)
        return remembered if self.memory else (all_codes, all_labels)
