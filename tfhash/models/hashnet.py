"""HashNet: Deep Learning to Hash by Continuation (Cao, Long, Wang, Yu; ICCV 2017). Supervised, images.

A CNN trunk, then K linear units z and the activation h = tanh(beta z), with beta
raised during training (continuation: tanh(beta z) -> sign(z)); the code is
b = sign(z). With s_ij = 1 when images i and j share a label, HashNet minimizes the
weighted negative log-likelihood of the pairs under an adaptive sigmoid:

    L = sum_ij w_ij ( log(1 + e^(alpha <h_i, h_j>)) - alpha s_ij <h_i, h_j> )
    w_ij = c_ij |S| / |S_1|  if s_ij = 1,   |S| / |S_0|  if s_ij = 0

S_1 and S_0 the similar and dissimilar pairs among the pairs S, and c_ij for
multi-label items the overlap |y_i & y_j| / |y_i | y_j| (1 for single labels).

Choices, one line each (docs/methods/hashnet.md):
- Pairs: each row against the global batch (the family's); |S|, |S_1|, |S_0| counted over the global batch's pairs.
- Normalization: the weighted sum over pairs divided by |S| (the authors' later code and DeepHash-pytorch).
- alpha: None is the authors' code's 10 / K; DeepHash-pytorch uses 0.1.
- Continuation: beta = beta_0 (1 + gamma t)^power, t counted in steps and raised every 200 (the authors'
  code: gamma 0.005, power 0.5); `continuation_per="epoch"`, gamma 1/20, every 20 is DeepHash-pytorch's.
- beta: `tfhash.layers.ContinuationTanh`'s non-trainable variable, driven by `tfhash.callbacks.BetaSchedule`
  (`HashNet.beta_schedule()`; the plan adds it), saved with the model.
- c_ij: the paper's label overlap on similar multi-label pairs (`label_overlap=True`); both codes use 1.
- No quantization term (the paper's; the authors' code has one, weighted 0).

Defaults: bits 32, alpha 10 / K, label_overlap True, beta 1, gamma 0.005, power 0.5,
every 200 steps, tanh head, small_cnn.
"""

import keras
from keras import ops

from tfhash.layers import ContinuationTanh
from tfhash.losses import balanced_pair_weights, label_overlap, label_similarity, pairwise_likelihood
from tfhash.models.base import finish_construction
from tfhash.models.family import PairwiseHashModel

CONTINUATION_UNITS = ("step", "epoch")


def continuation_beta(t, beta=1.0, gamma=0.005, power=0.5, every=200):
    """HashNet's schedule: beta (1 + gamma t')^power, t' = t rounded down to a multiple of `every`."""
    return beta * (1.0 + gamma * (every * (t // every))) ** power


@keras.saving.register_keras_serializable(package="tfhash")
class HashNet(PairwiseHashModel):
    """Supervised image hashing with HashNet's weighted pairwise likelihood and continuation.

    Args:
        alpha: the adaptive sigmoid's scale on <h_i, h_j>; None is 10 / bits (the authors' code).
        label_overlap: weigh similar multi-label pairs by their label overlap c_ij (the paper).
        beta: beta_0, the continuation's first beta in tanh(beta z).
        continuation_gamma: gamma of beta = beta_0 (1 + gamma t)^power.
        continuation_power: power of beta = beta_0 (1 + gamma t)^power.
        continuation_every: t is raised every this many steps (or epochs), beta held between.
        continuation_per: "step" (the authors' code) or "epoch" (DeepHash-pytorch's) counts t.
        activation: "tanh", the continuation tanh(beta z) (the paper); the family's "identity"
            or "sign" (straight-through) without continuation.
        **kwargs: `ImageArguments` (bits, input_shape, the trunk) and Keras's.

    Examples:
    >>> model = HashNet(bits=16, input_shape=(8, 8, 1))
    >>> model.compile(optimizer="adam")
    >>> model.fit(images, labels, batch_size=64, epochs=3, callbacks=[model.beta_schedule()])
    >>> codes = model.encode(images)  # uint8, shape (n, 2)
    """

    term_weights = {"likelihood_loss": 1.0}

    def __init__(self, alpha=None, label_overlap=True, beta=1.0, continuation_gamma=0.005, continuation_power=0.5,
                 continuation_every=200, continuation_per="step", activation="tanh", **kwargs):
        if alpha is not None and not alpha > 0:
            raise ValueError(f"alpha must be positive or None (10 / bits). Received: alpha={alpha!r}")
        if not beta > 0 or continuation_gamma < 0 or continuation_power < 0:
            raise ValueError("HashNet needs beta > 0, continuation_gamma >= 0 and continuation_power >= 0. "
                             f"Received: beta={beta!r}, continuation_gamma={continuation_gamma!r}, "
                             f"continuation_power={continuation_power!r}")
        if not isinstance(continuation_every, int) or continuation_every < 1:
            raise ValueError(f"continuation_every must be an int >= 1. Received: continuation_every={continuation_every!r}")
        if continuation_per not in CONTINUATION_UNITS:
            raise ValueError(f"continuation_per must be one of {CONTINUATION_UNITS}. "
                             f"Received: continuation_per={continuation_per!r}")
        # The continuation is tanh(beta z) on linear units: the family's head is then the identity.
        super().__init__(activation="identity" if activation == "tanh" else activation, **kwargs)
        self.activation = activation
        self.alpha = None if alpha is None else float(alpha)
        self.label_overlap = bool(label_overlap)
        self.beta = float(beta)
        self.continuation_gamma, self.continuation_power = float(continuation_gamma), float(continuation_power)
        self.continuation_every, self.continuation_per = int(continuation_every), continuation_per
        self.continuation = ContinuationTanh(beta=self.beta, name="continuation") if activation == "tanh" else None
        finish_construction(self, HashNet)

    @property
    def sigmoid_scale(self):
        """alpha, or 10 / K when it is None."""
        return 10.0 / self.bits if self.alpha is None else self.alpha

    def build(self, input_shape=None):
        if self.built:
            return
        super().build(input_shape)
        if self.continuation is not None:
            self.continuation.build((None, self.bits))

    def call(self, images, training=False):
        z = super().call(images, training=training)
        return z if self.continuation is None else self.continuation(z, training=training)

    def loss_terms(self, codes, labels, all_codes, all_labels, batch):
        theta = self.sigmoid_scale * ops.matmul(codes, ops.transpose(all_codes))
        s = ops.cast(label_similarity(labels, all_labels), theta.dtype)
        # |S|, |S_1|, |S_0| over the global batch's pairs: the same on every replica.
        among = ops.cast(label_similarity(all_labels, all_labels), theta.dtype)
        weights = balanced_pair_weights(s, among, balance_dissimilar=True)
        if self.label_overlap and len(labels.shape) == 2:
            weights = weights * ops.where(s > 0, ops.cast(label_overlap(labels, all_labels), theta.dtype), 1.0)
        return {"likelihood_loss": ops.mean(weights * pairwise_likelihood(theta, s), axis=1)}

    def beta_of(self, epoch, step):
        """The schedule's beta at an epoch and a step (both from 0; steps count across epochs)."""
        # The authors' code raises beta at its iteration counter (1-based) 200, 400, ...
        t = step + 1 if self.continuation_per == "step" else epoch
        return continuation_beta(t, self.beta, self.continuation_gamma, self.continuation_power,
                                 self.continuation_every)

    def beta_schedule(self):
        """The `BetaSchedule` callback that drives the continuation (None without it)."""
        from tfhash.callbacks import BetaSchedule

        return None if self.continuation is None else BetaSchedule(self.beta_of, layers=[self.continuation])

    @classmethod
    def training_plan(cls, data, *, bits, seed, strategy, model, train):
        """The family's plan, plus the continuation's `BetaSchedule`."""
        plan = super().training_plan(data, bits=bits, seed=seed, strategy=strategy, model=model, train=train)
        schedule = plan.model.beta_schedule()
        if schedule is not None:
            plan.callbacks.append(schedule)
        return plan


# The registry's `plan`: the family's, with the continuation's callback.
training_plan = HashNet.training_plan
