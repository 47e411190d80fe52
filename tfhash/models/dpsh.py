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
from tfhash.models.family import MemoryPairs


@keras.saving.register_keras_serializable(package="tfhash")
class DPSH(MemoryPairs):
    """Supervised image hashing with DPSH's pairwise likelihood and quantization term.

    Args:
        eta: weight of the quantization term |sign(u) - u|^2 / K.
        memory: pair each row with a memory of every training row's latest code
            and label (the reference code's) instead of the global batch.
        activation: the hash head's: "identity" (the paper), "tanh" or "sign".
        **kwargs: `MemoryPairs` (memory, num_train, label_shape), `ImageArguments` (bits, the trunk), Keras's.

    Examples:
    >>> model = DPSH(bits=16, input_shape=(8, 8, 1))
    >>> model.compile(optimizer="adam")
    >>> model.fit(batches(DPSH.fields, images=images, labels=labels, batch_size=64), epochs=1)
    >>> codes = model.encode(images)  # uint8, shape (n, 2)
    """

    term_weights = {"likelihood_loss": 1.0, "quantization_loss": "eta"}

    def __init__(self, eta=0.1, activation="identity", **kwargs):
        super().__init__(activation=activation, **kwargs)
        self.eta = float(eta)
        self.likelihood = PairwiseCrossEntropy(alpha=0.5)  # Theta = u_i^T u_j / 2, pairs unweighted
        finish_construction(self, DPSH)

    def loss_terms(self, codes, labels, all_codes, all_labels, batch):
        all_codes, all_labels = self.pair_columns(batch, all_codes, all_labels)
        return {"likelihood_loss": self.likelihood(codes, labels, all_codes, all_labels),
                "quantization_loss": quantization_l2(codes) / self.bits}


# The registry's `plan`: the family's.
training_plan = DPSH.training_plan
