"""DCH: Deep Cauchy Hashing (Cao, Long, Liu, Wang; CVPR 2018). Supervised, images.

A CNN trunk, then `fch`: K tanh units z; the code is b = sign(z). With the
normalized Hamming distance of continuous codes d_ij = K/2 (1 - cos(z_i, z_j))
and the Cauchy probability p(s_ij = 1 | d_ij) = gamma / (gamma + d_ij), DCH
minimizes the weighted Cauchy cross-entropy plus the Cauchy quantization loss:

    L = sum_ij w_ij [ s_ij log(d_ij / gamma) + log(1 + gamma / d_ij) ]
    Q = sum_i log(1 + d(|z_i|, 1) / gamma)
    min L + lambda Q,   w_ij = |S| / |S_1| if s_ij = 1,  |S| / |S_0| if s_ij = 0

Choices, one line each (docs/methods/dch.md):
- Pairs: each row against the other rows of the global batch (the family's), a row's pair with itself left out
  (`other_columns`): the paper's pairs are of two images, and d = 0 there.
- Weights: `balanced=True`, the paper's |S| / |S_1| and |S| / |S_0|, counted over the global batch's pairs
  (`balanced_pair_weights(..., balance_dissimilar=True)`).
- Per example: the weighted pair losses summed over the row's pairs and divided by their count (the step's
  mean is then DeepHash-pytorch's mean over pairs); the quantization per row, weighed by `quantization_weight`.
- Distance: the cosine not clipped (`max_cosine=None`, the paper); DeepHash-pytorch clips it at 0.99.
- Numerics: `cauchy_cross_entropy` reads d floored at 1e-6 in the dissimilar term (two distinct rows with
  parallel codes), so the loss and its gradients stay finite.
- Head: tanh (the paper and the authors' code); the family's "identity" is DeepHash-pytorch's linear head.

Defaults: bits 32, gamma 20, lambda 0.1, balanced, no clip, tanh head, small_cnn.
"""

import keras
from keras import ops

from tfhash.losses import (
    balanced_pair_weights,
    cauchy_cross_entropy,
    cauchy_quantization,
    cosine_hamming_distances,
    label_similarity,
)
from tfhash.models.base import finish_construction
from tfhash.models.family import PairwiseHashModel, other_columns


@keras.saving.register_keras_serializable(package="tfhash")
class DCH(PairwiseHashModel):
    """Supervised image hashing with DCH's Cauchy cross-entropy and Cauchy quantization loss.

    Each step pairs every image of the batch with every other image of the
    global batch (gathered across replicas), s_ij = 1 when they share a label,
    and minimizes

        mean_i [ sum_{j != i} w_ij CCE(d_ij, s_ij) / (n - 1) + lambda * log(1 + d(|z_i|, 1) / gamma) ]

    Args:
        gamma: the Cauchy scale, > 0: pairs within a Hamming distance of about gamma count as near.
        quantization_weight: lambda, weight of the Cauchy quantization loss.
        balanced: weigh similar pairs |S| / |S_1| and dissimilar ones |S| / |S_0| (the paper); False weighs all 1.
        max_cosine: clip the codes' cosine at this before the distance (DeepHash-pytorch: 0.99); None: no clip.
        activation: the hash head's: "tanh" (the paper), "identity" or "sign".
        **kwargs: `ImageArguments` (bits, input_shape, the trunk) and Keras's.

    Examples:
    >>> model = DCH(bits=16, input_shape=(8, 8, 1))
    >>> model.compile(optimizer="adam")
    >>> model.fit(batches(DCH.fields, images=images, labels=labels, batch_size=64), epochs=1)
    >>> codes = model.encode(images)  # uint8, shape (n, 2)
    """

    term_weights = {"cauchy_loss": 1.0, "quantization_loss": "quantization_weight"}
    def __init__(self, gamma=20.0, quantization_weight=0.1, balanced=True, max_cosine=None, activation="tanh",
                 **kwargs):
        if not gamma > 0:
            raise ValueError(f"gamma must be positive. Received: gamma={gamma}")
        if not quantization_weight >= 0:
            raise ValueError(f"quantization_weight must be non-negative. Received: "
                             f"quantization_weight={quantization_weight}")
        if max_cosine is not None and not 0 < max_cosine <= 1:
            raise ValueError(f"max_cosine must be in (0, 1], or None for no clip. Received: max_cosine={max_cosine}")
        super().__init__(activation=activation, **kwargs)
        self.gamma, self.quantization_weight, self.balanced = float(gamma), float(quantization_weight), bool(balanced)
        self.max_cosine = None if max_cosine is None else float(max_cosine)
        finish_construction(self, DCH)

    def loss_terms(self, codes, labels, all_codes, all_labels, batch):
        distance = cosine_hamming_distances(codes, all_codes, max_cosine=self.max_cosine)
        s = ops.cast(label_similarity(labels, all_labels), distance.dtype)
        columns = ops.shape(all_codes)[0]
        others = other_columns(ops.shape(codes)[0], columns, distance.dtype)
        if self.balanced:
            # Counted over the global batch's pairs of two rows: the same weights on every replica.
            among = ops.cast(label_similarity(all_labels, all_labels), distance.dtype)
            two_rows = 1.0 - ops.eye(columns, dtype=distance.dtype)
            weights = balanced_pair_weights(s, among, known=others, counted_known=two_rows, balance_dissimilar=True)
        else:
            weights = others
        pairs = ops.maximum(ops.cast(columns, distance.dtype) - 1.0, 1.0)
        return {"cauchy_loss": ops.sum(weights * cauchy_cross_entropy(distance, s, self.gamma), axis=1) / pairs,
                "quantization_loss": cauchy_quantization(codes, self.gamma)}


# The registry's `plan`: the family's.
training_plan = DCH.training_plan
