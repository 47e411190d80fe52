"""IDHN: Improved Deep Hashing Network with soft pairwise similarity (Zhang, Zou, Lin, Chen, Wang;
IEEE TMM 2019). Supervised, images, built for multi-label data.

A CNN trunk, then K linear units z squashed by softsign, u = z / (1 + |z|) in (-1, 1); the code is
b = sign(z). The similarity of two items is the cosine of their label vectors,
s_ij = <y_i, y_j> / (|y_i| |y_j|) in [0, 1]: 1 for equal label sets, 0 for disjoint ones, between
for overlapping ones. Hard pairs (s in {0, 1}) get a likelihood loss, soft pairs (0 < s < 1) a
squared one that asks the codes' similarity to equal s:

    Theta_ij = beta <u_i, u_j> / K
    hard:  log(1 + e^Theta_ij) - s_ij Theta_ij
    soft:  gamma K ( (<u_i, u_j> + K) / (2K) - s_ij )^2
    L = mean over pairs + alpha * mean_i mean_k ||u_ik| - 1|

For single-label data (class ids) s is 0 or 1: every pair is hard and IDHN is a scaled DPSH.

Choices, one line each (docs/methods/idhn.md):
- Losses and scales as the authors' code writes them (beta 5, gamma 0.1, alpha 0.1 on the per-bit mean).
- Hard pairs: s within 0.01 of 0 or 1 (the authors' code's test), so float rounding cannot make a pair soft.
- Pairs: each row against the global batch (the family's), itself included (the authors' code); `memory=True`
  against a memory of every training row's latest code and label (DeepHash-pytorch's U and Y).
- Head: linear, then softsign in the loss (`softsign=True`, both codes); the code is sign(z) either way.
- A row without labels (a zero label vector) has s = 0 with every row.

Defaults: bits 32, alpha 0.1, beta 5, gamma 0.1, softsign, memory False, identity head, small_cnn.
"""

import keras
from keras import ops

from tfhash.losses import pairwise_likelihood, quantization_abs_one, soft_label_similarity
from tfhash.models.base import finish_construction
from tfhash.models.family import MemoryPairs

# A pair is hard when s is within this of 0 or 1 (the authors' code: s < 0.01 or s > 0.99).
_HARD = 0.01


@keras.saving.register_keras_serializable(package="tfhash")
class IDHN(MemoryPairs):
    """Supervised image hashing with IDHN's soft pairwise similarity: a likelihood loss for hard
    pairs, a squared loss for soft ones and an L1 quantization term.

    Args:
        alpha: weight of the quantization term, the per-bit mean of ||u| - 1|.
        beta: scale of the inner product in the likelihood, Theta = beta <u_i, u_j> / K.
        gamma: weight of the squared loss of soft pairs (0 < s < 1).
        softsign: squash the head's output by softsign before the losses (the authors' code).
        activation: the hash head's: "identity" (the authors' code, then softsign), "tanh" or "sign".
        **kwargs: `MemoryPairs` (memory, num_train, label_shape), `ImageArguments` (bits, the trunk), Keras's.

    Examples:
    >>> model = IDHN(bits=16, input_shape=(8, 8, 1))
    >>> model.compile(optimizer="adam")
    >>> model.fit(batches(IDHN.fields, images=images, labels=multi_hot, batch_size=64), epochs=1)
    >>> codes = model.encode(images)  # uint8, shape (n, 2)
    """

    term_weights = {"likelihood_loss": 1.0, "soft_loss": "gamma", "quantization_loss": "alpha"}

    def __init__(self, alpha=0.1, beta=5.0, gamma=0.1, softsign=True, activation="identity", **kwargs):
        for name, value in (("alpha", alpha), ("gamma", gamma)):
            if not value >= 0:
                raise ValueError(f"{name} must be non-negative. Received: {name}={value}")
        if not beta > 0:
            raise ValueError(f"beta must be positive. Received: beta={beta}")
        super().__init__(activation=activation, **kwargs)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.softsign = bool(softsign)
        finish_construction(self, IDHN)

    def loss_terms(self, codes, labels, all_codes, all_labels, batch):
        all_codes, all_labels = self.pair_columns(batch, all_codes, all_labels)
        if self.softsign:
            codes, all_codes = ops.softsign(codes), ops.softsign(all_codes)
        bits = float(self.bits)
        inner = ops.matmul(codes, ops.transpose(all_codes))
        s = ops.cast(soft_label_similarity(labels, all_labels), inner.dtype)
        hard = ops.cast(ops.logical_or(ops.less(s, _HARD), ops.greater(s, 1.0 - _HARD)), inner.dtype)
        likelihood = pairwise_likelihood(self.beta * inner / bits, s)
        squared = bits * ops.square((inner + bits) / (2.0 * bits) - s)
        return {"likelihood_loss": ops.mean(hard * likelihood, axis=1),
                "soft_loss": ops.mean((1.0 - hard) * squared, axis=1),
                "quantization_loss": quantization_abs_one(codes) / bits}


# The registry's `plan`: the family's.
training_plan = IDHN.training_plan
