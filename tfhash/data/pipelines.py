"""tf.data pipelines that feed pairwise losses.

A pairwise loss needs labels beside the images: the models derive the pair
similarity S_ij inside the train step from the labels of the whole (gathered)
batch (`tfhash.losses.label_similarity`), single-label class ids and
multi-hot labels alike. So a pipeline yields `(images, labels)` batches.
"""

import numpy as np
import tensorflow as tf


def pairwise_batches(images, labels, batch_size, *, seed=0, shuffle=True, repeat=False):
    """Batches of `(images, labels)` for pairwise losses.

    Batches are full (`drop_remainder=True`) so every replica of a distribution
    strategy gets an equal share and every batch has the same number of pairs.

    Args:
        images: uint8 or float array (n, height, width, channels).
        labels: (n,) integer class ids or (n, c) multi-hot {0, 1} labels.
        batch_size: global batch size.
        seed: shuffle seed; the order is reproducible run to run.
        shuffle: reshuffle each epoch (seeded).
        repeat: repeat forever (pass `steps_per_epoch` to `fit`).

    Returns:
        A `tf.data.Dataset`.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(
            f"images and labels must have the same length. Received: {len(images)} images, "
            f"{len(labels)} labels"
        )
    if labels.ndim not in (1, 2):
        raise ValueError(
            "labels must be class ids (n,) or multi-hot (n, classes). "
            f"Received shape {labels.shape}"
        )
    if batch_size < 2 or batch_size > len(images):
        raise ValueError(
            f"batch_size must be in [2, {len(images)}] (pairs need two items). "
            f"Received: batch_size={batch_size}"
        )
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=True).map(_as_collective_types)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    # Each worker of a multi-worker strategy reads the same seeded stream and keeps its share.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _as_collective_types(images, labels):
    # Cross-replica collectives (all_gather, and Keras's build-time reduce under
    # MultiWorkerMirroredStrategy) accept 32/64-bit types only, not uint8.
    labels = tf.cast(labels, "float32" if labels.dtype.is_floating else "int32")
    return tf.cast(images, "float32"), labels


def pair_similarity(labels_a, labels_b):
    """NumPy S_ij: 1 where items share a label (class ids or multi-hot)."""
    a, b = np.asarray(labels_a), np.asarray(labels_b)
    if a.ndim == 1:
        return (a[:, None] == b[None, :]).astype(np.float32)
    return ((a.astype(np.float32) @ b.T.astype(np.float32)) > 0).astype(np.float32)
