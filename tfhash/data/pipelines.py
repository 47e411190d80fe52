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
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).map(lambda x, y: (x, _label_type(y)))
    return _finish(ds, len(images), batch_size, seed, shuffle, repeat)


def _finish(ds, n, batch_size, seed, shuffle, repeat):
    if batch_size < 2 or batch_size > n:
        raise ValueError(
            f"batch_size must be in [2, {n}] (pairs need two items). Received: batch_size={batch_size}"
        )
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=True).map(lambda x, y: (tf.cast(x, "float32"), y))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    # Each worker of a multi-worker strategy reads the same seeded stream and keeps its share.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def neighbour_batches(images, neighbours, batch_size, *, seed=0, shuffle=True):
    """Batches of `(images, (ids, neighbour_lists))` for unsupervised models.

    The models derive S_ij in {-1, +1} from the ids and neighbour lists of the
    gathered batch (`tfhash.neighbours.batch_similarity`); no labels travel.

    Args:
        images: (n, height, width, channels) raw images.
        neighbours: (n, m) int neighbour lists over the same n items (-1 padded),
            e.g. `tfhash.neighbours.neighbour_structure(features)`.
        batch_size: global batch size; seed, shuffle: as `pairwise_batches`.
    """
    images, neighbours = np.asarray(images), np.asarray(neighbours)
    if neighbours.ndim != 2 or len(neighbours) != len(images):
        raise ValueError(
            f"neighbours must be (n, m) lists for the {len(images)} images. Received: shape={neighbours.shape}"
        )
    # Ids and lists as float32: exact below 2**24 and gatherable across replicas.
    extras = (np.arange(len(images), dtype=np.float32), neighbours.astype(np.float32))
    ds = tf.data.Dataset.from_tensor_slices((images, extras))
    return _finish(ds, len(images), batch_size, seed, shuffle, repeat=False)


def _label_type(labels):
    # Cross-replica collectives (all_gather, and Keras's build-time reduce under
    # MultiWorkerMirroredStrategy) accept 32/64-bit types only, not uint8.
    return tf.cast(labels, "float32" if labels.dtype.is_floating else "int32")


def pair_similarity(labels_a, labels_b):
    """NumPy S_ij: 1 where items share a label (class ids or multi-hot)."""
    a, b = np.asarray(labels_a), np.asarray(labels_b)
    if a.ndim == 1:
        return (a[:, None] == b[None, :]).astype(np.float32)
    return ((a.astype(np.float32) @ b.T.astype(np.float32)) > 0).astype(np.float32)


def cross_modal_batches(images, texts, labels, batch_size, *, seed=0, shuffle=True):
    """Batches of paired rows for cross-modal models (SSAH): a dict with
    "images", "texts" (bag-of-words), "labels" (multi-hot) and "index" (the
    row's position in the training arrays, which models use to address their
    per-item memory), all float32 except the raw images.

    Args:
        images: (n, height, width, channels) raw images.
        texts: (n, vocabulary_size) bag-of-words vectors of the same n items.
        labels: (n, c) multi-hot labels (or (n,) class ids, turned one-hot).
        batch_size, seed, shuffle: as `pairwise_batches`.
    """
    images, texts, labels = np.asarray(images), np.asarray(texts), np.asarray(labels)
    counts = {"images": len(images), "texts": len(texts), "labels": len(labels)}
    if len(set(counts.values())) != 1:
        raise ValueError(f"images, texts and labels must describe the same items. Received counts: {counts}")
    if texts.ndim != 2:
        raise ValueError(f"texts must be bag-of-words vectors (n, vocabulary_size). Received: shape={texts.shape}")
    if labels.ndim == 1:
        labels = np.eye(int(labels.max()) + 1, dtype=np.float32)[labels]
    if labels.ndim != 2:
        raise ValueError(f"labels must be multi-hot (n, classes) or class ids (n,). Received: shape={labels.shape}")
    n = len(images)
    if batch_size < 2 or batch_size > n:
        raise ValueError(f"batch_size must be in [2, {n}] (pairs need two items). Received: batch_size={batch_size}")
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "images": images,
            "texts": texts.astype(np.float32),
            "labels": labels.astype(np.float32),
            # Float32 (exact below 2**24) so ids can be gathered across replicas.
            "index": np.arange(n, dtype=np.float32),
        }
    )
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)
