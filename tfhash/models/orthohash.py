"""OrthoHash: One Loss for All (Hoe, Ng, Zhang, Chan, Song, Xiang; NeurIPS 2021). Supervised, images.

A CNN trunk, then K linear units and batch norm: the continuous code v (the
code is sign(v)). Each class y has a fixed binary target code c_y in {-1, +1}^K,
the codes nearly orthogonal. The logits are the cosines of v to the class
codes, with a margin m off the true class and a scale s, under one cross-entropy:

    logit_j = s * (cos(v, c_j) - m [j = y]),   L = CE(softmax(logits), y)

Maximizing cos(v, c_y) with c_y binary also pulls v towards a binary vector
(the paper's argument for one loss); batch norm balances the bits. Multi-hot
labels: the margin off every positive class, and the cross-entropy against
the labels spread evenly over the row's positives (the paper's label smoothing).

Choices, one line each (docs/methods/orthohash.md):
- Class codes: Bernoulli(0.5) signs (the authors' default "B"), drawn from `codebook_seed`, or
  `codebook="hadamard"` (rows of [H_K; -H_K], CSQ's); kept as a non-trainable weight, saved with the model.
- s = sqrt(K), m 0.2: the paper's (its supplementary material; the authors' code's 8 is sqrt(64), its default
  K); a cosine margin (their "arc" margin is not offered).
- Quantization: off (`quantization_weight=0`, the paper's one loss and the authors' default); their
  explicit term 1 - cos(v, sign(v)) (sign held constant) is the option.
- Head: Dense(K) then BatchNormalization (the authors' momentum 0.1, i.e. Keras's 0.9; eps 1e-5),
  synchronized across replicas; `batch_norm=False` drops it.
- Multi-label: "label_smoothing" (the paper's); "bce" (the authors' option: sigmoid cross-entropy of the
  margin logits, averaged over the classes). A row with no label has no classification loss.

Defaults: bits 32, scale sqrt(K), margin 0.2, quantization_weight 0, Bernoulli codes (seed 0), batch norm, small_cnn.
"""

import math

import keras
import numpy as np
from keras import ops

from tfhash.losses import _NORM_FLOOR, pairwise_likelihood
from tfhash.models.base import finish_construction
from tfhash.models.family import PairwiseHashModel, hadamard_codes

CODEBOOKS = ("bernoulli", "hadamard")
MULTI_LABEL = ("label_smoothing", "bce")


def class_codes(num_classes, bits, codebook="bernoulli", seed=0):
    """(num_classes, bits) target codes in {-1, +1}: Bernoulli(0.5) signs drawn from `seed`, or the
    rows of [H; -H] for the Sylvester Hadamard matrix H of order `bits` (a power of 2, at most 2 * bits classes)."""
    if codebook not in CODEBOOKS:
        raise ValueError(f"codebook must be one of {CODEBOOKS}. Received: codebook={codebook!r}")
    if codebook == "bernoulli":
        return np.random.default_rng(seed).integers(0, 2, size=(num_classes, bits)).astype("float64") * 2 - 1
    if bits & (bits - 1) or num_classes > 2 * bits:
        raise ValueError(f"codebook='hadamard' needs bits a power of 2 and at most 2 * bits classes. "
                         f"Received: bits={bits}, num_classes={num_classes}")
    return hadamard_codes(num_classes, bits).astype("float64")


def cosine_logits(codes, targets):
    """cos(v_i, c_j), (n, c): the codes' cosines to the class codes, each norm floored (a zero code has
    cosine 0). Unit rows, then their products: `losses._cosines` divides the products instead, which
    rounds differently (a few ulps)."""
    def unit(x):
        return x / ops.maximum(ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True)), _NORM_FLOOR)

    return ops.matmul(unit(codes), ops.transpose(unit(targets)))


def margin_cross_entropy(cosines, labels, scale, margin, multi_label="label_smoothing"):
    """One loss per row: the cross-entropy of s * (cos - m y) against class ids (n,), or multi-hot rows (n, c)
    ("label_smoothing": the softmax's against y / sum(y); "bce": the sigmoid's, averaged over the classes)."""
    if len(labels.shape) == 1:
        ids = ops.cast(labels, "int32")
        onehot = ops.one_hot(ids, cosines.shape[-1], dtype=cosines.dtype)
        logits = scale * (cosines - margin * onehot)
        return keras.losses.sparse_categorical_crossentropy(ids, logits, from_logits=True)
    targets = ops.cast(labels, cosines.dtype)
    logits = scale * (cosines - margin * targets)
    if multi_label == "bce":
        return ops.mean(pairwise_likelihood(logits, targets), axis=-1)
    spread = targets / ops.maximum(ops.sum(targets, axis=-1, keepdims=True), 1.0)
    return -ops.sum(spread * ops.log_softmax(logits, axis=-1), axis=-1)


def cosine_quantization(codes):
    """1 - cos(v, sign(v)), one value per row, the sign held constant: the authors' explicit term ("cs")."""
    signs = ops.stop_gradient(ops.sign(codes))
    norms = ops.sqrt(ops.sum(ops.square(codes), axis=-1)) * ops.sqrt(ops.sum(ops.square(signs), axis=-1))
    return 1.0 - ops.sum(codes * signs, axis=-1) / ops.maximum(norms, _NORM_FLOOR)


@keras.saving.register_keras_serializable(package="tfhash")
class OrthoHash(PairwiseHashModel):
    """Supervised image hashing with OrthoHash's one cosine-margin cross-entropy over fixed class codes.

    Args:
        scale: s, the cosine logits' scale; None (default) is sqrt(K), the paper's.
        margin: m, taken off the cosine of each true class.
        quantization_weight: weight of the explicit term 1 - cos(v, sign(v)) (0: the paper's one loss).
        codebook: the class codes: "bernoulli" (random signs) or "hadamard" (rows of [H; -H]).
        codebook_seed: seed of the Bernoulli class codes.
        multi_label: the loss of multi-hot labels: "label_smoothing" (the paper's) or "bce".
        batch_norm: batch norm on the codes (the paper's), synchronized across replicas.
        num_classes: c, the class codes' count (taken from the data).
        activation: the hash layer's: "identity" only (the paper's linear layer, then batch norm).
        **kwargs: `ImageArguments` (bits, input_shape, the trunk) and Keras's.

    Examples:
    >>> model = OrthoHash(bits=16, input_shape=(8, 8, 1), num_classes=10)
    >>> model.compile(optimizer="adam")
    >>> model.fit(batches(OrthoHash.fields, images=images, labels=labels, batch_size=64), epochs=1)
    >>> codes = model.encode(images)  # uint8, shape (n, 2)
    """

    term_weights = {"classification_loss": 1.0, "quantization_loss": "quantization_weight"}

    def __init__(self, scale=None, margin=0.2, quantization_weight=0.0, codebook="bernoulli", codebook_seed=0,
                 multi_label="label_smoothing", batch_norm=True, num_classes=10, activation="identity", **kwargs):
        if multi_label not in MULTI_LABEL:
            raise ValueError(f"multi_label must be one of {MULTI_LABEL}. Received: multi_label={multi_label!r}")
        if activation != "identity":
            raise ValueError(f"activation must be 'identity' (OrthoHash's head is linear, then batch norm). "
                             f"Received: activation={activation!r}")
        if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, or None for sqrt(bits). Received: scale={scale!r}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive integer. Received: num_classes={num_classes}")
        super().__init__(activation=activation, **kwargs)
        self.scale = None if scale is None else float(scale)
        self.margin, self.quantization_weight = float(margin), float(quantization_weight)
        self.logit_scale = math.sqrt(self.bits) if scale is None else self.scale
        self.codebook, self.codebook_seed, self.multi_label = codebook, int(codebook_seed), multi_label
        self.batch_norm, self.num_classes = bool(batch_norm), int(num_classes)
        self._targets = class_codes(self.num_classes, self.bits, codebook, self.codebook_seed)
        # PyTorch's BatchNorm1d(momentum=0.1, eps=1e-5); global-batch statistics under N replicas.
        self.code_norm = (keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=True,
                                                          name="code_norm") if self.batch_norm else None)
        finish_construction(self, OrthoHash)

    def build(self, input_shape=None):
        if self.built:
            return
        super().build(input_shape)
        if self.code_norm is not None:
            self.code_norm.build((None, self.bits))
        self.class_codes = self.add_weight(shape=self._targets.shape, initializer="zeros", trainable=False,
                                           name="class_codes")
        self.class_codes.assign(self._targets.astype(self.class_codes.dtype))

    def call(self, images, training=False):
        codes = super().call(images, training=training)
        return self.code_norm(codes, training=training) if self.code_norm is not None else codes

    def loss_terms(self, codes, labels, all_codes, all_labels, batch):
        cosines = cosine_logits(codes, ops.cast(self.class_codes, codes.dtype))
        return {"classification_loss": margin_cross_entropy(cosines, labels, self.logit_scale, self.margin,
                                                            self.multi_label),
                "quantization_loss": cosine_quantization(codes)}


# The registry's `plan`: the family's.
training_plan = OrthoHash.training_plan
