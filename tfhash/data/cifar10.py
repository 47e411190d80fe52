"""CIFAR-10 through TensorFlow Datasets, for the three split conventions of
public hashing code (see `tfhash.data.PROTOCOLS`: cifar10_54000,
cifar10_59000, cifar10_50000)."""

import numpy as np


def load_cifar10(data_dir=None):
    """All 60,000 CIFAR-10 images, TFDS's "train" split then its "test" split.

    The conventions draw queries, training and database images from this
    pool, not from the official train/test division. Needs the TFDS
    `cifar10` dataset: downloaded on first use (network), or prepared in
    `data_dir` beforehand.

    Returns:
        `(images, labels)`: uint8 (60000, 32, 32, 3) and int64 (60000,).
    """
    import tensorflow_datasets as tfds

    from tfhash.data.remote import require_tfds

    require_tfds("cifar10", data_dir, "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz")
    images, labels = [], []
    for split in ("train", "test"):
        # Batches rather than batch_size=-1, which needs a known cardinality.
        ds = tfds.load("cifar10", split=split, data_dir=data_dir, as_supervised=True, shuffle_files=False)
        for x, y in tfds.as_numpy(ds.batch(8192)):
            images.append(x)
            labels.append(y)
    return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int64)
