"""MS-COCO 2014 through TensorFlow Datasets, as hashing papers use it: every
train2014 + val2014 image with at least one object, labelled by the set of its
80 object categories (multi-hot). See the `coco` protocol."""

import numpy as np

NUM_LABELS = 80


def load_coco(data_dir=None, image_size=64):
    """The 122,218 labelled MS-COCO 2014 images (TFDS `coco/2014`, train then validation).

    Images are resized (bilinear) to `image_size` x `image_size`; at the
    default 64 they take 1.5 GB. Needs the TFDS `coco/2014` dataset: downloaded
    on first use (network, about 37 GB), or prepared in `data_dir` beforehand.

    Returns:
        `(images, labels)`: uint8 (n, image_size, image_size, 3) and uint8 (n, 80) multi-hot.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def example(features):
        image = tf.image.resize(features["image"], (image_size, image_size), antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        labels = tf.reduce_max(tf.one_hot(features["objects"]["label"], NUM_LABELS, dtype=tf.uint8), axis=0)
        return image, tf.reshape(labels, [NUM_LABELS])  # all zeros for an image without objects

    from tfhash.data.remote import require_tfds

    require_tfds("coco/2014", data_dir, "http://images.cocodataset.org/zips/train2014.zip")
    images, labels = [], []
    for split in ("train", "validation"):
        ds = tfds.load("coco/2014", split=split, data_dir=data_dir, shuffle_files=False)
        for x, y in tfds.as_numpy(ds.map(example).batch(1024)):
            images.append(x)
            labels.append(y)
    images, labels = np.concatenate(images), np.concatenate(labels)
    keep = labels.any(axis=1)  # the papers drop images without a category
    return images[keep], labels[keep]
