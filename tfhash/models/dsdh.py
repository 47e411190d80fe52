"""DSDH: Deep Supervised Discrete Hashing (Li, Sun, He, Tan; NeurIPS 2017). Supervised, images.

A CNN trunk, then K linear units u (the family's head, activation "identity").
Beside the network, DSDH keeps discrete codes B in {-1, +1}^{N x K} of the N
training rows and a linear classifier W (K x c) that predicts the labels Y from
them. With s_ij = 1 when rows i and j share a label and Theta_ij = u_i^T u_j / 2:

    min  - sum_ij (s_ij Theta_ij - log(1 + e^Theta_ij)) + mu sum_i |y_i - W^T b_i|^2
         + nu |W|_F^2 + eta sum_i |b_i - u_i|^2,        b_i in {-1, +1}^K

solved by alternation: the network by backpropagation with B and W fixed (the
likelihood and eta |b_i - u_i|^2), then, at each epoch's end, W in closed form
and B bit by bit (discrete cyclic coordinate descent), with U fixed:

    W = (B^T B + nu/mu I)^-1 B^T Y,   P = Y W^T + eta/mu U
    for each bit k:  B_k = sign(P_k - B_{-k} W_{-k} w_k)     (B_{-k}, W_{-k}: without bit k)

Choices, one line each (docs/methods/dsdh.md):
- Pairs: each row against the global batch (the family's); `memory=True` against every training row's latest
  u (DeepHash-pytorch's and the authors' code's). U is kept either way: the B-step reads it.
- Per example: the likelihood averaged over the row's pairs, |b - u|^2 over the bits (DPSH's normalization);
  the B-step is the paper's sums, so eta/mu and nu/mu are the paper's ratios there.
- W and B: updated at each epoch's end over the whole training set (`DiscreteCodeUpdate`, added by the plan;
  DeepHash-pytorch's and TreezzZ's schedule), `dcc_iterations` W-then-B sweeps; the authors' code updates them
  per mini-batch on the batch's rows (not offered).
- Before the first B-step, a row's b is its own sign(u), held constant (the authors' code sets B = sign(U) first).
- Multi-label: Y the multi-hot rows, as the paper defines it (class ids become one-hot rows).
- The classification term mu |y_i - W^T b_i|^2 is logged with the loss; it has no gradient (B, W fixed).

Defaults: bits 32, mu 1, nu 0.1, eta 0.1, dcc_iterations 1, memory False, identity head, small_cnn.
"""

import keras
import numpy as np
from keras import ops

from tfhash.losses import PairwiseCrossEntropy
from tfhash.models.base import finish_construction
from tfhash.models.family import MemoryPairs, TrainingState


def signs(x):
    """sign with sign(0) = +1: codes in {-1, +1} (`SignPack`'s convention)."""
    return np.where(x >= 0, 1.0, -1.0)


def label_matrix(labels, num_classes):
    """Y (n, c): one-hot rows of class ids (n,), or multi-hot rows (n, c) as floats."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return np.eye(num_classes)[labels.astype(np.int64)]
    return labels.astype(np.float64)


def discrete_step(codes, labels, binary, mu, nu, eta, iterations=1):
    """DSDH's W- and B-steps on the whole training set, in float64: `iterations` sweeps of
    W = (B^T B + nu/mu I)^-1 B^T Y then, bit by bit, B_k = sign(P_k - B_{-k} W_{-k} w_k), P = Y W^T + eta/mu U.

    Args:
        codes: U (N, K), the network's latest outputs.
        labels: Y (N, c), one-hot or multi-hot rows.
        binary: B (N, K) in {-1, +1}, the codes to start from.
        mu, nu, eta: the paper's weights.
        iterations: W-then-B sweeps.

    Returns:
        (B (N, K), W (K, c)).
    """
    codes, labels, binary = (np.asarray(a, np.float64) for a in (codes, labels, binary))
    binary = binary.copy()
    bits = binary.shape[1]
    for _ in range(iterations):
        weights = np.linalg.solve(binary.T @ binary + nu / mu * np.eye(bits), binary.T @ labels)
        target = labels @ weights.T + eta / mu * codes
        for k in range(bits):
            others = np.arange(bits) != k
            binary[:, k] = signs(target[:, k] - binary[:, others] @ (weights[others] @ weights[k]))
    return binary, weights


@keras.saving.register_keras_serializable(package="tfhash")
class DiscreteCodes(TrainingState):
    """DSDH's discrete codes B (rows, K) of the training rows and classifier W (K, c): training state,
    written by `DiscreteCodeUpdate` (identical on every replica), not saved with the model.
    A row of B that is 0 has not been solved yet.

    Args:
        rows: N, the training rows.
        bits: K.
        num_classes: c.
    """

    def __init__(self, rows, bits, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.rows, self.bits, self.num_classes = int(rows), int(bits), int(num_classes)
        self.binary = self.state("binary", (self.rows, self.bits))
        self.classifier = self.state("classifier", (self.bits, self.num_classes))
        self.built = True

    def get_config(self):
        return {**super().get_config(), "rows": self.rows, "bits": self.bits, "num_classes": self.num_classes}


class DiscreteCodeUpdate(keras.callbacks.Callback):
    """At each epoch's end, DSDH's W- and B-steps over the training set (`DSDH.update_discrete_codes`).

    Args:
        labels: the training rows' labels, class ids (N,) or multi-hot (N, c), in the order the
            batches' "index" field counts them.
    """

    def __init__(self, labels):
        super().__init__()
        self.labels = np.asarray(labels)

    def on_epoch_end(self, epoch, logs=None):
        self.model.update_discrete_codes(self.labels)


@keras.saving.register_keras_serializable(package="tfhash")
class DSDH(MemoryPairs):
    """Supervised image hashing with DSDH's pairwise likelihood and discrete codes classified by labels.

    Args:
        mu: weight of the classification term |y - W^T b|^2 (in the B-step, and in the logged loss).
        nu: weight of the classifier's regularizer |W|^2 (in the W-step).
        eta: weight of |b - u|^2: per bit in the network's loss, and eta/mu in the B-step.
        dcc_iterations: W-then-B sweeps of discrete cyclic coordinate descent at each epoch's end.
        memory: pair each row with every training row's latest code and label instead of the global batch.
        num_train: N, the training rows (taken from the data).
        label_shape: a label's shape, () or (c,) (taken from the data).
        num_classes: c, the classifier's outputs (taken from the data).
        activation: the hash head's: "identity" (the paper), "tanh" or "sign".
        **kwargs: `MemoryPairs` (memory, num_train, label_shape), `ImageArguments` (bits, the trunk), Keras's.

    Examples:
    >>> model = DSDH(bits=16, input_shape=(8, 8, 1), num_train=len(images), num_classes=10)
    >>> model.compile(optimizer="adam")
    >>> model.fit(batches(DSDH.fields, images=images, labels=labels, batch_size=64), epochs=3,
    ...           callbacks=[DiscreteCodeUpdate(labels)])
    >>> codes = model.encode(images)  # uint8, shape (n, 2)
    """

    term_weights = {"likelihood_loss": 1.0, "quantization_loss": "eta", "classification_loss": "mu"}
    keeps_memory = True  # U: the B-step reads it

    def __init__(self, mu=1.0, nu=0.1, eta=0.1, dcc_iterations=1, num_classes=10, activation="identity", **kwargs):
        if not mu > 0:
            raise ValueError(f"mu must be positive (the B-step divides by it). Received: mu={mu}")
        if int(dcc_iterations) < 1:
            raise ValueError(f"dcc_iterations must be a positive integer. Received: dcc_iterations={dcc_iterations}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive integer. Received: num_classes={num_classes}")
        super().__init__(activation=activation, **kwargs)
        self.mu, self.nu, self.eta = float(mu), float(nu), float(eta)
        self.dcc_iterations, self.num_classes = int(dcc_iterations), int(num_classes)
        self.likelihood = PairwiseCrossEntropy(alpha=0.5)  # Theta = u_i^T u_j / 2, pairs unweighted
        self.discrete = DiscreteCodes(self.num_train, self.bits, self.num_classes, name="discrete_codes")
        finish_construction(self, DSDH)

    def loss_terms(self, codes, labels, all_codes, all_labels, batch):
        all_codes, all_labels = self.pair_columns(batch, all_codes, all_labels)
        rows = ops.cast(batch["index"], "int32")
        solved = ops.cast(ops.take(self.discrete.binary, rows, axis=0), codes.dtype)
        # A row not solved yet (0) is pulled to its own sign, held constant.
        own = ops.stop_gradient(ops.where(ops.greater_equal(codes, 0), 1.0, -1.0))
        binary = ops.where(ops.equal(solved, 0), ops.cast(own, codes.dtype), solved)
        if len(labels.shape) == 1:
            targets = ops.one_hot(ops.cast(labels, "int32"), self.num_classes, dtype=codes.dtype)
        else:
            targets = ops.cast(labels, codes.dtype)
        predicted = ops.matmul(binary, ops.cast(self.discrete.classifier, codes.dtype))
        return {"likelihood_loss": self.likelihood(codes, labels, all_codes, all_labels),
                "quantization_loss": ops.mean(ops.square(binary - codes), axis=-1),
                "classification_loss": ops.sum(ops.square(targets - predicted), axis=-1)}

    def update_discrete_codes(self, labels):
        """The W- and B-steps over the training set: U from the code memory, Y from `labels` (the training
        rows' class ids or multi-hot rows, in index order). Every replica gets the same B and W."""
        codes = np.asarray(self.code_memory.codes.value, np.float64)
        binary = np.asarray(self.discrete.binary.value, np.float64)
        # Before the first B-step, start from B = sign(U) (the authors' code's start).
        binary = np.where(binary == 0, signs(codes), binary)
        binary, weights = discrete_step(codes, label_matrix(labels, self.num_classes), binary, self.mu, self.nu,
                                        self.eta, self.dcc_iterations)
        self.discrete.binary.assign(binary.astype(self.discrete.binary.dtype))
        self.discrete.classifier.assign(weights.astype(self.discrete.classifier.dtype))

    @classmethod
    def training_plan(cls, data, **kwargs):
        """The family's plan, with `DiscreteCodeUpdate` on the training rows' labels."""
        plan = super().training_plan(data, **kwargs)
        _, labels = data.subset("train")
        plan.callbacks.append(DiscreteCodeUpdate(labels))
        return plan


# The registry's `plan`.
training_plan = DSDH.training_plan
