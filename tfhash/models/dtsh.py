"""DTSH: Deep Supervised Hashing with Triplet Labels (Wang, Shi, Kitani; ACCV 2016). Supervised, images.

A CNN trunk, then K linear units u (the family's head, activation "identity");
the code is b = sign(u). A triplet (q, p, n) says q is more similar to p than
to n: here, every anchor q of the batch with every p that shares a label with
it and every n that shares none. With Theta_ij = u_i^T u_j / 2, DTSH maximizes
the likelihood of the triplets under sigmoid(Theta_qp - Theta_qn - alpha):

    L = - sum_(q,p,n) log sigmoid(Theta_qp - Theta_qn - alpha) + lambda * sum_i |b_i - u_i|^2

Choices, one line each (docs/methods/dtsh.md):
- Triplets: every (anchor, positive, negative) of the global batch by the shared-label relation (multi-hot
  rows too); an item is not its own positive (DeepHash-pytorch pairs it with itself).
- Average: every triplet of the global batch weighs the same (the paper's sum, divided by the count);
  `triplet_average="anchor"` is DeepHash-pytorch's mean per anchor, then over the anchors that have triplets.
- Theta: u_i^T u_j / 2 (the paper); DeepHash-pytorch drops the 1/2 (`theta_scale=1.0`).
- alpha K/2: the authors' code (Minione/DTSH, on the paper's Theta); DeepHash-pytorch's 5 is `margin=5`.
- lambda 1 on the per-bit mean |b - u|^2 / K: DeepHash-pytorch's (the authors' 100 weighs a sum over 22,500
  triplets per anchor, not a mean).
- -log sigmoid(x) as softplus(-x): finite for any x (DeepHash-pytorch clamps x to [-100, 50]).
- Head: linear (the paper); the family's "tanh" and "sign" are options.

Defaults: bits 32, margin K/2, quantization_weight 1, theta_scale 0.5, triplet_average "triplet",
identity head, small_cnn.
"""

import keras
from keras import ops

from tfhash.losses import label_similarity, quantization_l2, triplet_likelihood
from tfhash.models.base import finish_construction
from tfhash.models.family import PairwiseHashModel, other_columns

TRIPLET_AVERAGES = ("triplet", "anchor")


@keras.saving.register_keras_serializable(package="tfhash")
class DTSH(PairwiseHashModel):
    """Supervised image hashing with DTSH's triplet likelihood and quantization term.

    Args:
        margin: alpha, the margin between Theta_qp and Theta_qn in the triplet likelihood; None
            (default) is K/2, the authors' code's.
        quantization_weight: lambda, weight of the quantization term |sign(u) - u|^2 / K.
        theta_scale: Theta_ij = theta_scale * u_i^T u_j (the paper: 1/2; DeepHash-pytorch: 1).
        triplet_average: "triplet" weighs every triplet of the batch alike (the paper's sum); "anchor"
            averages each anchor's triplets, then the anchors (DeepHash-pytorch's).
        activation: the hash head's: "identity" (the paper), "tanh" or "sign".
        **kwargs: `ImageArguments` (bits, input_shape, the trunk) and Keras's.

    Examples:
    >>> model = DTSH(bits=16, input_shape=(8, 8, 1))
    >>> model.compile(optimizer="adam")
    >>> model.fit(images, labels, batch_size=64, epochs=1)
    >>> codes = model.encode(images)  # uint8, shape (n, 2)
    """

    term_weights = {"triplet_loss": 1.0, "quantization_loss": "quantization_weight"}

    def __init__(self, margin=None, quantization_weight=1.0, theta_scale=0.5, triplet_average="triplet",
                 activation="identity", **kwargs):
        if not theta_scale > 0:
            raise ValueError(f"theta_scale must be positive. Received: theta_scale={theta_scale!r}")
        if triplet_average not in TRIPLET_AVERAGES:
            raise ValueError(f"triplet_average must be one of {TRIPLET_AVERAGES}. "
                             f"Received: triplet_average={triplet_average!r}")
        super().__init__(activation=activation, **kwargs)
        if margin is not None and not margin >= 0:
            raise ValueError(f"margin must be non-negative, or None for bits / 2. Received: margin={margin!r}")
        self.margin = None if margin is None else float(margin)
        self.quantization_weight = float(quantization_weight)
        self.alpha = self.bits / 2 if margin is None else self.margin
        self.theta_scale, self.triplet_average = float(theta_scale), triplet_average
        finish_construction(self, DTSH)

    def loss_terms(self, codes, labels, all_codes, all_labels, batch):
        rows, columns = ops.shape(codes)[0], ops.shape(all_codes)[0]
        dtype = codes.dtype
        theta = self.theta_scale * ops.matmul(codes, ops.transpose(all_codes))
        similar = ops.cast(label_similarity(labels, all_labels), dtype)
        # Positives share a label, negatives share none; neither is the anchor itself.
        others = other_columns(rows, columns, dtype)
        positive, negative = similar * others, (1.0 - similar) * others
        # (rows, p, n): every positive against every negative of each anchor.
        losses = triplet_likelihood(ops.expand_dims(theta, 2), ops.expand_dims(theta, 1), self.alpha)
        triplets = ops.expand_dims(positive, 2) * ops.expand_dims(negative, 1)
        per_anchor = ops.sum(losses * triplets, axis=(1, 2))
        # Counts over the global batch (the same on every replica), so N replicas take one device's steps.
        every_similar = ops.cast(label_similarity(all_labels, all_labels), dtype)
        every_other = 1.0 - ops.eye(columns, dtype=dtype)
        every_positive = ops.sum(every_similar * every_other, axis=1)
        every_negative = ops.sum((1.0 - every_similar) * every_other, axis=1)
        n = ops.cast(columns, dtype)
        if self.triplet_average == "triplet":
            # The family averages rows: n / T per row makes it the mean over the T triplets.
            triplet_loss = per_anchor * n / ops.maximum(ops.sum(every_positive * every_negative), 1.0)
        else:
            anchors = ops.sum(ops.cast(every_positive * every_negative > 0, dtype))
            own = ops.sum(triplets, axis=(1, 2))
            triplet_loss = per_anchor / ops.maximum(own, 1.0) * n / ops.maximum(anchors, 1.0)
        return {"triplet_loss": triplet_loss, "quantization_loss": quantization_l2(codes) / self.bits}


# The registry's `plan`: the family's.
training_plan = DTSH.training_plan
