"""DHN: Deep Hashing Network (Zhu, Long, Wang, Cao; AAAI 2016). Supervised, images.

A CNN trunk, then `fch`: K tanh units, z in [-1, 1]^K; the code is b = sign(z).
With s_ij = 1 when images i and j share a label, DHN minimizes L + lambda * Q:

    L = sum_ij [ log(1 + exp(alpha <z_i, z_j>)) - s_ij * alpha <z_i, z_j> ]   (pairwise cross-entropy)
    Q = sum_i sum_k log cosh(|z_ik| - 1)                                      (bimodal Laplacian prior)

Choices, one line each (paper vs thulab's DeepHash code):
- Inner-product scale: `alpha` (paper: 1; the code scales it with K).
- Pair weights: `balanced=True` weighs similar and dissimilar pairs equally (the code); False is the paper.
- Quantization: `quantization="log_cosh"` (paper) or "squared", mean((|z| - 1)^2) (the code).
- Pairs: each row against the whole global batch, columns held constant (DeepHash-pytorch's code memory).
- Trunk: "small_cnn" (the paper: AlexNet conv1..fc7) or any `keras.applications` model.
- Head: tanh (the paper); the family's `activation` option offers "identity" and "sign" (straight-through).

Defaults: bits 32, alpha 1, balanced False, log_cosh, lambda 0.1, dropout 0,
small_cnn, tanh. The published recipes (`dhn_fashion_mnist_32`, `_64`) set alpha 0.25
and balanced pairs. What was measured: docs/methods/dhn.md.
"""

import keras

from tfhash.losses import PairwiseCrossEntropy, QuantizationLoss
from tfhash.models.base import finish_construction
from tfhash.models.family import PairwiseHashModel


@keras.saving.register_keras_serializable(package="tfhash")
class DHN(PairwiseHashModel):
    """Supervised image hashing with a pairwise cross-entropy and a quantization loss.

    A trunk, then `fch`: K tanh units whose sign is the code. Each step pairs
    every image of the batch with every image of the global batch (gathered
    across replicas), with S_ij = 1 when they share a label, and minimizes

        mean_i [ mean_j PCE(z_i, z_j; s_ij) + quantization_weight * Q(z_i) ]

    The column codes z_j are held constant (as in DeepHash-pytorch's code
    memory), which halves the gradient of the symmetric sum but lets a replica
    differentiate only its own rows. The step, config and plan are the
    family's (`tfhash.models.family.PairwiseHashModel`).

    Args:
        alpha: scale of the inner product in the pairwise loss (paper: 1).
        balanced: weigh similar and dissimilar pairs equally (thulab's code).
        quantization: "log_cosh" (paper) or "squared" (thulab's code).
        quantization_weight: lambda, weight of the quantization loss.
        **kwargs: the family's `activation` (tanh), `ImageArguments` (bits, input_shape, the trunk), Keras's.

    Examples:
    >>> model = DHN(bits=16, input_shape=(8, 8, 1))
    >>> model.compile(optimizer="adam")
    >>> model.fit(images, labels, batch_size=64, epochs=1)
    >>> codes = model.encode(images)  # uint8, shape (n, 2)
    """

    term_weights = {"pairwise_loss": 1.0, "quantization_loss": "quantization_weight"}

    def __init__(self, alpha=1.0, balanced=False, quantization="log_cosh", quantization_weight=0.1, **kwargs):
        super().__init__(**kwargs)
        self.alpha, self.balanced = float(alpha), bool(balanced)
        self.quantization, self.quantization_weight = quantization, float(quantization_weight)
        self.pairwise_loss = PairwiseCrossEntropy(alpha=self.alpha, balanced=self.balanced)
        self.quantization_loss = QuantizationLoss(quantization)
        finish_construction(self, DHN)

    def loss_terms(self, codes, labels, all_codes, all_labels, batch):
        return {"pairwise_loss": self.pairwise_loss(codes, labels, all_codes, all_labels),
                "quantization_loss": self.quantization_loss(codes)}


# The registry's `plan`: the family's.
training_plan = DHN.training_plan
