"""What every tfhash model shares: encoding to packed codes, input checks,
and the cross-replica gather that makes pairwise losses strategy-independent."""

import keras
import numpy as np
import tensorflow as tf

from tfhash.layers import SignPack


def gather_across_replicas(*tensors):
    """All replicas' rows of each tensor (the tensors themselves on one device).

    Pairwise losses pair each local row with the whole global batch, so a
    MirroredStrategy step computes the same loss as one device does.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensors
    return tuple(context.all_gather(t, axis=0) for t in tensors)


def check_images(images, input_shape, name="images"):
    """Validates a batch of raw images; returns it as a NumPy array."""
    array = np.asarray(images)
    expected = (None, *input_shape)
    if array.ndim != len(expected) or tuple(array.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"{name} must have shape {expected}. Received: shape={array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(
            f"{name} must be a numeric array (uint8 or float pixels on a 0-255 scale). "
            f"Received: dtype={array.dtype}"
        )
    if len(array) == 0:
        raise ValueError(f"{name} is empty: expected at least one image. Received: shape={array.shape}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
        raise ValueError(
            f"{name} must be finite. Received NaN or inf in {len(bad)} image(s), "
            f"first at index {bad[:5].tolist()}"
        )
    return array


class HashModel(keras.Model):
    """Base class of image hashing models: `call` gives relaxed codes z in
    [-1, 1]^bits; `encode` gives packed binary codes, `np.packbits(z >= 0)`."""

    bits: int
    image_shape: tuple

    def encode(self, images, batch_size=256, verbose=0):
        """Packed uint8 codes (n, bits // 8) for raw images (0-255 scale)."""
        images = check_images(images, self.image_shape)
        z = self.predict(images, batch_size=batch_size, verbose=verbose)
        return SignPack()(z).numpy()

    def encode_real(self, images, batch_size=256, verbose=0):
        """Relaxed codes z (n, bits), float32, before the sign."""
        images = check_images(images, self.image_shape)
        return self.predict(images, batch_size=batch_size, verbose=verbose)
