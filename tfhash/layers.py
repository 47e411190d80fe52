"""Layers shared by tfhash models: the hash layer and its straight-through sign, bit packing and the
annealed signs."""

import keras
from keras import ops

from tfhash.checks import check_bits  # the models import it from here too


# The hash head's activations (`HashLayer`).
ACTIVATIONS = ("tanh", "identity", "sign")


def straight_through_sign(x):
    """b = sign(x) forward (sign(0) = +1, as `SignPack`), the identity backward (the straight-through
    estimator): `HashLayer`'s "sign" activation and GreedyHash's hash coding layer."""
    # Forward sign(x) exactly (x - x is 0), backward the identity.
    return ops.where(ops.greater_equal(x, 0), ops.ones_like(x), -ops.ones_like(x)) + (x - ops.stop_gradient(x))


@keras.saving.register_keras_serializable(package="tfhash")
class HashLayer(keras.layers.Layer):
    """Dense projection to `bits` units, then an activation: the relaxed code z.

    During training z stands in for the binary code; at inference `sign(z)`
    is the code (see `SignPack`). The activation, one line each:
    - "tanh" (default): z = tanh(Wx + b) in (-1, 1) (DHN).
    - "identity": z = Wx + b, unbounded; a quantization loss pulls it to +-1 (DPSH).
    - "sign": z = sign(Wx + b) in {-1, +1} (sign(0) = +1, as `SignPack`), with the
      straight-through gradient: backward it is the identity's.

    Args:
        bits: code length K, a positive multiple of 8 (codes are packed to bytes).
        kernel_initializer: initializer of the projection.
        activation: one of `ACTIVATIONS`.

    Examples:
    >>> layer = HashLayer(bits=16)
    >>> layer(np.zeros((2, 5))).shape
    (2, 16)
    """

    def __init__(self, bits, kernel_initializer="glorot_uniform", activation="tanh", **kwargs):
        super().__init__(**kwargs)
        check_bits(bits)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}. Received: activation={activation!r}")
        self.bits = bits
        self.activation = activation
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.dense = keras.layers.Dense(
            bits, kernel_initializer=self.kernel_initializer, name="fch"
        )

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, inputs):
        x = self.dense(inputs)
        if self.activation == "tanh":
            return ops.tanh(x)
        if self.activation == "sign":
            return straight_through_sign(x)
        return x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.bits)

    def get_config(self):
        return {
            **super().get_config(),
            "bits": self.bits,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "activation": self.activation,
        }


@keras.saving.register_keras_serializable(package="tfhash")
class SignPack(keras.layers.Layer):
    """Binarizes real codes with sign (z >= 0 -> bit 1) and packs them to uint8.

    Byte layout is exactly `np.packbits(z >= 0, axis=-1)`: bit 0 of the code is
    the most significant bit of byte 0. Packing is a multiply by the bit weights
    (128, 64, ..., 1) and a sum, because TFLite converts that with builtin ops
    while `left_shift`/`bitwise_or` need Flex ops.

    Examples:
    >>> SignPack()(np.array([[1.0, -1, -1, -1, -1, -1, -1, 0.5]])).numpy()
    array([[129]], dtype=uint8)
    """

    def call(self, codes):
        bits = ops.shape(codes)[-1]
        weights = ops.convert_to_tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype="int32")
        on = ops.cast(ops.greater_equal(codes, 0), "int32")
        grouped = ops.reshape(on, (-1, bits // 8, 8))
        packed = ops.sum(grouped * weights, axis=-1)
        return ops.cast(packed, "uint8")

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // 8)


@keras.saving.register_keras_serializable(package="tfhash")
class AnnealedSign(keras.layers.Layer):
    """sign(x) approached by tanh(beta * x) as beta grows (BGAN, Song et al. 2018).

    In training the layer outputs the smooth `tanh(beta * x)`; at inference the
    exact `sign(x)` (with sign(0) = +1, the bit convention of `SignPack`). Beta
    is a non-trainable variable, so a callback can raise it between steps and
    the compiled train step reads the new value (a Python float would be frozen
    into the graph at trace time); it is saved with the model.

    Args:
        beta: initial beta (> 0).

    Examples:
    >>> layer = AnnealedSign(beta=5.0)
    >>> layer(np.array([[-0.2, 0.0, 0.1]]), training=True)  # tanh(5x)
    >>> layer.beta.assign(20.0)  # what `BetaSchedule` does between steps
    """

    def __init__(self, beta=1.0, **kwargs):
        super().__init__(**kwargs)
        if not beta > 0:
            raise ValueError(f"beta must be positive. Received: beta={beta!r}")
        self.initial_beta = float(beta)

    def build(self, input_shape):
        self.beta = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.initial_beta),
            trainable=False,
            name="beta",
        )

    def call(self, inputs, training=False):
        if training:
            return ops.tanh(self.beta * inputs)
        return ops.where(ops.greater_equal(inputs, 0), 1.0, -1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "beta": self.initial_beta}


@keras.saving.register_keras_serializable(package="tfhash")
class ContinuationTanh(AnnealedSign):
    """tanh(beta * x) in training and at inference: HashNet's continuation activation.

    Beta is `AnnealedSign`'s non-trainable variable, so `BetaSchedule` (which drives
    every `AnnealedSign`) raises it between steps and the compiled step reads it;
    unlike `AnnealedSign`, inference keeps the smooth value, whose sign is the code.

    Args:
        beta: initial beta (> 0).
    """

    def call(self, inputs, training=False):
        return ops.tanh(ops.cast(self.beta, inputs.dtype) * inputs)
