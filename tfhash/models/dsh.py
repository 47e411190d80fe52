"""DSH: Deep Supervised Hashing (Liu, Wang, Shan, Chen; CVPR 2016). Supervised, images.

A CNN trunk, then K linear units u (the family's head, activation "identity");
the code is b = sign(u). For a pair of images with s = 1 when they share a
label and d = |u_i - u_j|^2, DSH minimizes the contrastive loss with an L1
pull of every output towards -1 or +1:

    L_r(i, j) = s d / 2 + (1 - s) max(0, m - d) / 2 + alpha (|| |u_i| - 1 ||_1 + || |u_j| - 1 ||_1)

with margin m = 2K, so dissimilar codes are pushed to a squared distance of
at least 2K (half the 4K between opposite codes in {-1, +1}^K).

Choices, one line each (docs/methods/dsh.md):
- Pairs: each row against the global batch (the family's; the paper's pairs within the mini-batch); `memory=True`
  against a memory of every training row's latest code and label instead (DeepHash-pytorch's U and Y).
- Per example: the contrastive loss averaged over the row's pairs (the authors' code averages over pairs), the
  regularizer summed over the bits (the paper's L1 norm); alpha 0.01 is the paper's and the authors' code's.
- Margin: `margin=None` is the paper's 2K; a number sets it.
- Head: linear (the paper and both codes); the family's `activation` offers "tanh" and "sign" (straight-through).

Defaults: bits 32, alpha 0.01, margin 2K, memory False, identity head, small_cnn.
"""

import keras
from keras import ops

from tfhash.losses import contrastive, label_similarity, quantization_abs_one, squared_euclidean_distances
from tfhash.models.base import finish_construction
from tfhash.models.family import MemoryPairs


@keras.saving.register_keras_serializable(package="tfhash")
class DSH(MemoryPairs):
    """Supervised image hashing with DSH's contrastive loss and L1 regularizer.

    Each step pairs every image of the batch with every image of the global
    batch (or, with `memory`, with every training row's latest code), s_ij = 1
    when they share a label, and minimizes

        mean_i [ mean_j contrastive(|u_i - u_j|^2, s_ij, m) + alpha * || |u_i| - 1 ||_1 ]

    Args:
        alpha: weight of the regularizer || |u| - 1 ||_1 (summed over the bits).
        margin: m, the squared distance dissimilar codes are pushed beyond; None is 2K (the paper).
        activation: the hash head's: "identity" (the paper), "tanh" or "sign".
        **kwargs: `MemoryPairs` (memory, num_train, label_shape), `ImageArguments` (bits, the trunk), Keras's.

    Examples:
    >>> model = DSH(bits=16, input_shape=(8, 8, 1))
    >>> model.compile(optimizer="adam")
    >>> model.fit(batches(DSH.fields, images=images, labels=labels, batch_size=64), epochs=1)
    >>> codes = model.encode(images)  # uint8, shape (n, 2)
    """

    term_weights = {"contrastive_loss": 1.0, "regularizer": "alpha"}

    def __init__(self, alpha=0.01, margin=None, activation="identity", **kwargs):
        if margin is not None and not margin > 0:
            raise ValueError(f"margin must be positive, or None for 2 * bits. Received: margin={margin}")
        if not alpha >= 0:
            raise ValueError(f"alpha must be non-negative. Received: alpha={alpha}")
        super().__init__(activation=activation, **kwargs)
        self.alpha = float(alpha)
        self.margin = None if margin is None else float(margin)
        finish_construction(self, DSH)

    def loss_terms(self, codes, labels, all_codes, all_labels, batch):
        all_codes, all_labels = self.pair_columns(batch, all_codes, all_labels)
        margin = 2.0 * self.bits if self.margin is None else self.margin
        # The expanded form rounds: a code against itself may come out a hair below 0.
        distance = ops.maximum(squared_euclidean_distances(codes, all_codes), 0.0)
        s = ops.cast(label_similarity(labels, all_labels), distance.dtype)
        return {"contrastive_loss": ops.mean(contrastive(distance, s, margin), axis=1),
                "regularizer": quantization_abs_one(codes)}


# The registry's `plan`: the family's.
training_plan = DSH.training_plan
