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

Defaults: bits 32, alpha 1, balanced False, log_cosh, lambda 0.1, dropout 0,
small_cnn. The published recipes (`dhn_fashion_mnist_32`, `_64`) set alpha 0.25
and balanced pairs. What was measured: docs/methods/dhn.md.
"""

import keras
import tensorflow as tf

from tfhash.layers import HashLayer
from tfhash.losses import PairwiseCrossEntropy, QuantizationLoss
from tfhash.models.backbones import SMALL_CNN
from tfhash.models.base import (
    ImageHashModel,
    Trainer,
    TrainingPlan,
    finish_construction,
    gather_across_replicas,
    record_losses,
)


@keras.saving.register_keras_serializable(package="tfhash")
class DHN(Trainer, ImageHashModel):
    """Supervised image hashing with a pairwise cross-entropy and a quantization loss.

    A trunk, then `fch`: K tanh units whose sign is the code. Each step pairs
    every image of the batch with every image of the global batch (gathered
    across replicas), with S_ij = 1 when they share a label, and minimizes

        mean_i [ mean_j PCE(z_i, z_j; s_ij) + quantization_weight * Q(z_i) ]

    The column codes z_j are held constant (as in DeepHash-pytorch's code
    memory), which halves the gradient of the symmetric sum but lets a replica
    differentiate only its own rows.

    Args:
        bits: code length K (multiple of 8).
        input_shape: raw image shape (height, width, channels), pixels 0-255.
        backbone: "small_cnn" or a `keras.applications` model name.
        backbone_weights: None, a local weights file, or "imagenet" (network).
        dropout: dropout rate inside the small CNN.
        alpha: scale of the inner product in the pairwise loss (paper: 1).
        balanced: weigh similar and dissimilar pairs equally (thulab's code).
        quantization: "log_cosh" (paper) or "squared" (thulab's code).
        quantization_weight: lambda, weight of the quantization loss.

    Examples:
    >>> model = DHN(bits=16, input_shape=(8, 8, 1))
    >>> model.compile(optimizer="adam")
    >>> model.fit(images, labels, batch_size=64, epochs=1)
    >>> codes = model.encode(images)  # uint8, shape (n, 2)
    """

    loss_names = ("loss", "pairwise_loss", "quantization_loss")

    def __init__(
        self,
        bits=32,
        input_shape=(28, 28, 1),
        backbone=SMALL_CNN,
        backbone_weights=None,
        dropout=0.0,
        backbone_input_size=None,
        freeze_backbone=False,
        alpha=1.0,
        balanced=False,
        quantization="log_cosh",
        quantization_weight=0.1,
        **kwargs,
    ):
        super().__init__(bits, input_shape, backbone, backbone_weights, dropout, backbone_input_size, freeze_backbone,
                         **kwargs)
        self.quantization_weight = float(quantization_weight)
        self.hash_layer = HashLayer(bits, name="hash")
        self.pairwise_loss = PairwiseCrossEntropy(alpha=alpha, balanced=balanced)
        self.quantization_loss = QuantizationLoss(quantization)
        finish_construction(self, DHN)

    def build(self, input_shape=None):
        if self.built:
            return
        super().build()
        self.hash_layer.build(self.feature_shape)

    def call(self, images, training=False):
        return self.hash_layer(self.backbone(images, training=training))

    def encoders(self):
        return {"image": self}

    def _compute_losses(self, images, labels, training):
        z = self(images, training=training)
        z_all, labels_all = gather_across_replicas(z, labels)
        labels = tf.cast(labels, labels_all.dtype)
        pairwise = self.pairwise_loss(z, labels, tf.stop_gradient(z_all), labels_all)
        quantization = self.quantization_loss(z)
        per_example = pairwise + self.quantization_weight * quantization
        # Divide by the global batch: the optimizer sums replicas' gradients.
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=tf.shape(z_all)[0])
        if self.losses:
            loss += tf.nn.scale_regularization_loss(tf.add_n(self.losses))
        return loss, per_example, pairwise, quantization

    def _track(self, per_example, pairwise, quantization):
        return record_losses(
            self, loss=per_example, pairwise_loss=pairwise, quantization_loss=quantization
        )

    def train_step(self, data):
        images, labels = data[0], data[1]
        with tf.GradientTape() as tape:
            loss, *parts = self._compute_losses(images, labels, training=True)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return self._track(*parts)

    def test_step(self, data):
        images, labels = data[0], data[1]
        _, *parts = self._compute_losses(images, labels, training=False)
        return self._track(*parts)

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.pairwise_loss.alpha,
            "balanced": self.pairwise_loss.balanced,
            "quantization": self.quantization_loss.variant,
            "quantization_weight": self.quantization_weight,
        }


def training_plan(data, *, bits, seed, strategy, model, train):
    """DHN on a protocol's labelled training split (the registry's `plan`); a
    frozen ImageNet trunk's features are computed once (`trunk_inputs`)."""
    from tfhash.data import pairwise_batches
    from tfhash.models.backbones import trunk_inputs

    images, labels = data.subset("train")
    with strategy.scope():
        net = DHN(bits=bits, input_shape=images.shape[1:], **model)
        net.build((None, *images.shape[1:]))
        net.compile(optimizer=keras.optimizers.Adam(train["learning_rate"]))
    inputs = trunk_inputs(images, **model)
    return TrainingPlan(net, pairwise_batches(inputs, labels, train["batch_size"], seed=seed), train["epochs"])
