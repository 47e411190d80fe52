"""GreedyHash: Greedy Hash (Su, Zhang, Han, Tian; NeurIPS 2018). Supervised, images.

A CNN trunk, then K linear units h (the family's head, activation "identity").
The hash coding layer takes b = sign(h) in the forward pass and passes the
gradient straight through (dL/dh := dL/db): the greedy step towards the nearest
discrete solution. A linear classifier on the codes, y_hat = W^T b, is trained
with the cross-entropy, and a cubic penalty keeps h near {-1, +1}:

    L = CE(softmax(W^T b), y) + alpha * mean_k ||h_k| - 1|^3,   b = sign(h)

Choices, one line each (docs/methods/greedyhash.md):
- Sign: sign(0) = +1 (`SignPack`'s; torch.sign gives 0, a measure-zero case); backward the identity, unclipped.
- Penalty: p = 3 (the paper's), averaged over the bits as the authors' code does; alpha 0.1 (their CIFAR-10 value).
- Classifier: linear, no bias (the authors' code and DeepHash-pytorch), trained with the network.
- Multi-label (not in the paper): the sigmoid cross-entropy of W^T b against the multi-hot row, averaged
  over the classes (DeepHash-pytorch takes the argmax of the row, one class: `multi_label="argmax"`).
- Head: the hash layer is linear ("identity"); "tanh" is an option, "sign" is refused (the sign is the loss's).

Defaults: bits 32, alpha 0.1, multi_label "sigmoid", identity head, small_cnn.
"""

import keras
from keras import ops

from tfhash.layers import straight_through_sign
from tfhash.losses import pairwise_likelihood
from tfhash.models.base import finish_construction
from tfhash.models.family import PairwiseHashModel

MULTI_LABEL = ("sigmoid", "argmax")
HEADS = ("identity", "tanh")


def cubic_penalty(codes):
    """mean_k ||h_k| - 1|^3, one value per row of (n, K) codes: GreedyHash's penalty."""
    return ops.mean(ops.abs(ops.abs(codes) - 1.0) ** 3, axis=-1)


def classification_loss(logits, labels, multi_label="sigmoid"):
    """One loss per row of (n, c) logits: the softmax cross-entropy of class ids (n,), or for
    multi-hot rows (n, c) the sigmoid cross-entropy averaged over the classes ("sigmoid") or the
    softmax cross-entropy of the row's first positive class ("argmax", DeepHash-pytorch's)."""
    if len(labels.shape) == 1:
        return keras.losses.sparse_categorical_crossentropy(ops.cast(labels, "int32"), logits, from_logits=True)
    if multi_label == "argmax":
        return keras.losses.sparse_categorical_crossentropy(ops.argmax(labels, axis=-1), logits, from_logits=True)
    # log(1 + e^x) - y x per class: the sigmoid cross-entropy.
    return ops.mean(pairwise_likelihood(logits, ops.cast(labels, logits.dtype)), axis=-1)


@keras.saving.register_keras_serializable(package="tfhash")
class GreedyHash(PairwiseHashModel):
    """Supervised image hashing with GreedyHash's sign layer, code classifier and cubic penalty.

    Args:
        alpha: weight of the cubic penalty mean_k ||h_k| - 1|^3.
        multi_label: the classification loss of multi-hot labels: "sigmoid" (the sigmoid
            cross-entropy per class) or "argmax" (DeepHash-pytorch's: softmax over the first positive class).
        num_classes: c, the classifier's outputs (taken from the data).
        activation: the hash layer's before the sign: "identity" (the paper) or "tanh".
        **kwargs: `ImageArguments` (bits, input_shape, the trunk) and Keras's.

    Examples:
    >>> model = GreedyHash(bits=16, input_shape=(8, 8, 1), num_classes=10)
    >>> model.compile(optimizer="adam")
    >>> model.fit(batches(GreedyHash.fields, images=images, labels=labels, batch_size=64), epochs=1)
    >>> codes = model.encode(images)  # uint8, shape (n, 2)
    """

    term_weights = {"classification_loss": 1.0, "quantization_loss": "alpha"}

    def __init__(self, alpha=0.1, multi_label="sigmoid", num_classes=10, activation="identity", **kwargs):
        if multi_label not in MULTI_LABEL:
            raise ValueError(f"multi_label must be one of {MULTI_LABEL}. Received: multi_label={multi_label!r}")
        if activation not in HEADS:
            raise ValueError(f"activation must be one of {HEADS} (GreedyHash applies the sign itself). "
                             f"Received: activation={activation!r}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive integer. Received: num_classes={num_classes}")
        super().__init__(activation=activation, **kwargs)
        self.alpha, self.multi_label, self.num_classes = float(alpha), multi_label, int(num_classes)
        self.classifier = keras.layers.Dense(self.num_classes, use_bias=False, name="classifier")
        finish_construction(self, GreedyHash)

    def build(self, input_shape=None):
        if self.built:
            return
        super().build(input_shape)
        self.classifier.build((None, self.bits))

    def loss_terms(self, codes, labels, all_codes, all_labels, batch):
        logits = self.classifier(straight_through_sign(codes))
        return {"classification_loss": classification_loss(logits, labels, self.multi_label),
                "quantization_loss": cubic_penalty(codes)}


# The registry's `plan`: the family's.
training_plan = GreedyHash.training_plan
