"""CSQ: Central Similarity Quantization (Yuan, Wang, Zhang, et al.; CVPR 2020). Supervised, images.

A CNN trunk, then K tanh units u; the code is b = sign(u). Each class has a
hash center c in {-1, +1}^K, fixed before training and far from the others;
each item is pulled to its center by a binary cross-entropy on h = (u + 1) / 2:

    L = mean_k BCE(h_k, (c_k + 1) / 2) + lambda * mean_k Q(u_k)
    BCE(h, t) = -t log h - (1 - t) log(1 - h)

Choices, one line each (docs/methods/csq.md):
- Centers: rows of the K x K Hadamard matrix, then their negations (up to 2K classes), when K is a
  power of 2; otherwise (or past 2K) Bernoulli(0.5) draws, the draw with the largest minimum pairwise
  Hamming distance of `center_tries` (stopping at min > K/4 and mean >= K/2, DeepHash-pytorch's test).
- Multi-label items: the majority vote per bit of their labels' centers; a tie takes a fixed random
  bit (one {-1, +1}^K vector drawn with the centers, as DeepHash-pytorch).
- Determinism: centers and tie bits from `center_seed` (NumPy's PCG64), kept as non-trainable weights
  and saved with the model.
- Quantization: `quantization="log_cosh"` (the paper's smooth | |u| - 1 |) or "squared" (the authors'
  and DeepHash-pytorch's (|u| - 1)^2), a mean over the bits; lambda 1e-4 (both codes).
- BCE: `keras.losses.binary_crossentropy`, h clipped to [epsilon, 1 - epsilon] (Keras's epsilon).
- Pairs: none; the family's global batch is not needed (the loss is per item).

Defaults: bits 32, quantization_weight 1e-4, log_cosh, center_seed 0, tanh head, small_cnn.
"""

import keras
import numpy as np
from keras import ops

from tfhash.losses import quantization_l2, quantization_log_cosh
from tfhash.models.base import finish_construction
from tfhash.models.family import PairwiseHashModel, hadamard_codes

QUANTIZATIONS = ("log_cosh", "squared")


def hash_centers(num_classes, bits, seed=0, tries=20):
    """CSQ's hash centers: (num_classes, bits) in {-1, +1} (float32), deterministic from `seed`.

    Rows of Sylvester's Hadamard matrix and their negations first (`hadamard_codes`, K a power of 2:
    up to 2K centers at distance K/2 or K from each other); the rest Bernoulli(0.5) draws: of up to
    `tries` draws of them all, the first whose pairwise distances have min > K/4
    and mean >= K/2, else the one with the largest minimum distance.
    """
    if bits & (bits - 1) == 0:
        fixed = hadamard_codes(num_classes, bits)
    else:
        fixed = np.zeros((0, bits), dtype=np.int64)
    missing = num_classes - len(fixed)
    if missing <= 0:
        return fixed.astype(np.float32)
    rng = np.random.default_rng(seed)
    best, best_min = None, -1
    for _ in range(tries):
        drawn = np.where(rng.random((missing, bits)) < 0.5, -1, 1)
        centers = np.concatenate([fixed, drawn])
        distances = (bits - centers @ centers.T) // 2
        pairs = distances[np.triu_indices(num_classes, 1)]
        if not len(pairs):  # one class: nothing to separate
            return centers.astype(np.float32)
        if pairs.min() > best_min:
            best, best_min = centers, pairs.min()
        if pairs.min() > bits / 4 and pairs.mean() >= bits / 2:
            best = centers
            break
    return best.astype(np.float32)


def tie_bits(bits, seed=0):
    """The {-1, +1}^K bits a multi-label item's tied votes take, drawn after the centers' stream."""
    return np.where(np.random.default_rng([seed, 1]).random(bits) < 0.5, -1.0, 1.0).astype(np.float32)


@keras.saving.register_keras_serializable(package="tfhash")
class CSQ(PairwiseHashModel):
    """Supervised image hashing by pulling each item's code to its class's hash center.

    Args:
        num_classes: the classes (class ids' count or the multi-hot width; taken from the data).
        quantization_weight: lambda, weight of the quantization term (a mean over the bits).
        quantization: "log_cosh" (the paper) or "squared" (the authors' and DeepHash-pytorch's code).
        center_seed: seeds the Bernoulli centers and the multi-label tie bits.
        center_tries: draws of the Bernoulli centers, keeping the best separated.
        activation: the hash head's, "tanh" (the paper), "identity" or "sign".
        **kwargs: `ImageArguments` (bits, input_shape, the trunk) and Keras's.

    Examples:
    >>> model = CSQ(bits=16, input_shape=(8, 8, 1), num_classes=10)
    >>> model.compile(optimizer="adam")
    >>> model.fit(images, labels, batch_size=64, epochs=1)
    >>> codes = model.encode(images)  # uint8, shape (n, 2)
    """

    term_weights = {"center_loss": 1.0, "quantization_loss": "quantization_weight"}

    def __init__(self, num_classes=10, quantization_weight=1e-4, quantization="log_cosh", center_seed=0,
                 center_tries=20, activation="tanh", **kwargs):
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1. Received: num_classes={num_classes!r}")
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}. Received: quantization={quantization!r}")
        if not isinstance(center_tries, int) or center_tries < 1:
            raise ValueError(f"center_tries must be an int >= 1. Received: center_tries={center_tries!r}")
        super().__init__(activation=activation, **kwargs)
        self.num_classes, self.quantization_weight = int(num_classes), float(quantization_weight)
        self.quantization, self.center_seed, self.center_tries = quantization, int(center_seed), center_tries
        finish_construction(self, CSQ)

    def build(self, input_shape=None):
        if self.built:
            return
        super().build(input_shape)
        centers = hash_centers(self.num_classes, self.bits, self.center_seed, self.center_tries)
        # Saved with the model: a reload has the centers it trained with, whatever NumPy draws.
        self.centers = self.add_weight(shape=centers.shape, initializer=keras.initializers.Constant(centers),
                                       trainable=False, name="hash_centers")
        self.tie_bits = self.add_weight(shape=(self.bits,), trainable=False, name="tie_bits",
                                        initializer=keras.initializers.Constant(tie_bits(self.bits, self.center_seed)))

    def item_centers(self, labels, dtype="float32"):
        """Each item's center: its class's, or for multi-hot rows the majority vote of its labels'
        centers, a tie taking `tie_bits`."""
        centers = ops.cast(self.centers, dtype)
        if len(labels.shape) == 1:
            return ops.take(centers, ops.cast(labels, "int32"), axis=0)
        votes = ops.matmul(ops.cast(labels, dtype), centers)
        ties = ops.broadcast_to(ops.cast(self.tie_bits, dtype), ops.shape(votes))
        return ops.where(votes > 0, 1.0, ops.where(votes < 0, -1.0, ties))

    def loss_terms(self, codes, labels, all_codes, all_labels, batch):
        targets = (self.item_centers(labels, codes.dtype) + 1.0) / 2.0
        center_loss = keras.losses.binary_crossentropy(targets, (codes + 1.0) / 2.0)
        quantize = quantization_log_cosh if self.quantization == "log_cosh" else quantization_l2
        return {"center_loss": center_loss, "quantization_loss": quantize(codes) / self.bits}


# The registry's `plan`: the family's (it passes num_classes from the data).
training_plan = CSQ.training_plan
