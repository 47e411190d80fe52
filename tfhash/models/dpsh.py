"""DPSH: Deep Pairwise-Supervised Hashing (Li, Wang, Kang; IJCAI 2016). Supervised, images.

A CNN trunk, then K linear units u (the family's head, activation "identity");
the code is b = sign(u). With s_ij = 1 when images i and j share a label and
Theta_ij = u_i^T u_j / 2, DPSH minimizes

    J = - sum_ij (s_ij Theta_ij - log(1 + e^Theta_ij)) + eta * sum_i |b_i - u_i|^2

Choices, one line each (docs/methods/dpsh.md):
- Pairs: each row against the global batch (the family's); `memory=True` against a memory of every
  training row's latest code and label instead (the reference code's U and Y; `evaluate` writes it too).
- Per example: the likelihood averaged over the row's pairs, the quantization over the bits: eta weighs
  the per-bit mean, as in DeepHash-pytorch, whose eta 0.1 is the default (the paper sums both terms).
- Head: linear (the paper); the family's `activation` offers "tanh" and "sign" (straight-through).

Defaults: bits 32, eta 0.1, memory False, identity head, small_cnn.
"""

import keras

from tfhash.losses import PairwiseCrossEntropy, quantization_l2
from tfhash.models.base import finish_construction
from tfhash.models.family import CodeMemory, PairwiseHashModel


@keras.saving.register_keras_serializable(package="tfhash")
class DPSH(PairwiseHashModel):
    """Supervised image hashing with DPSH's pairwise likelihood and quantization term.

    Args:
        eta: weight of the quantization term |sign(u) - u|^2 / K.
        memory: pair each row with a memory of every training row's latest code
            and label (the reference code's) instead of the global batch.
        num_train: N, the training rows (with `memory`; taken from the data).
        label_shape: a label's shape, () or (c,) (with `memory`; taken from the data).
        activation: the hash head's: "identity" (the paper), "tanh" or "sign".
        **kwargs: `ImageArguments` (bits, input_shape, the trunk) and Keras's.

    Examples:
    >>> model = DPSH(bits=16, input_shape=(8, 8, 1))
    >>> model.compile(optimizer="adam")
    >>> model.fit(batches(DPSH.fields, images=images, labels=labels, batch_size=64), epochs=1)
    >>> codes = model.encode(images)  # uint8, shape (n, 2)
    """

    term_weights = {"likelihood_loss": 1.0, "quantization_loss": "eta"}
    fields = ("images", "labels", "index")

    def __init__(self, eta=0.1, memory=False, num_train=1, label_shape=(), activation="identity", **kwargs):
        super().__init__(activation=activation, **kwargs)
        self.eta, self.memory = float(eta), bool(memory)
        self.num_train, self.label_shape = int(num_train), tuple(label_shape)
        self.likelihood = PairwiseCrossEntropy(alpha=0.5)  # Theta = u_i^T u_j / 2, pairs unweighted
        self.code_memory = CodeMemory(num_train, self.bits, label_shape, name="code_memory") if memory else None
        finish_construction(self, DPSH)

    def loss_terms(self, codes, labels, all_codes, all_labels, batch):
        if self.code_memory is not None:
            all_codes, all_labels = self.code_memory(batch["index"], all_codes, all_labels)
        return {"likelihood_loss": self.likelihood(codes, labels, all_codes, all_labels),
                "quantization_loss": quantization_l2(codes) / self.bits}


# The registry's `plan`: the family's.
training_plan = DPSH.training_plan
