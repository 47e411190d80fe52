"""CPU-only test setup: two logical CPU devices so MirroredStrategy runs here."""

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Must happen before TensorFlow initializes its devices, hence at import time.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mirrored():
    """One MirroredStrategy over the 2 logical CPUs, shared by every test in the
    process: separate instances reuse collective instance keys and abort each
    other's all-reduces ("Shape mismatch in the collective instance")."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    return strategy


@pytest.fixture(scope="module")
def digits_two_view():
    """scikit-learn's digits as image-text pairs, for the cross-modal models:
    the 8x8 image, and the "text" of its 64 pixels thresholded to words (pixel
    on / off), with one-hot labels. {part: (images, texts, labels)} for the
    query, train and database parts of the committed split."""
    import numpy as np

    from tfhash.data import load_protocol

    data = load_protocol("digits")

    def triple(part):
        images, labels = data.subset(part)
        texts = (images.reshape(len(images), -1) >= 128).astype(np.float32)
        return images, texts, np.eye(10, dtype=np.float32)[labels]

    return {part: triple(part) for part in ("query", "train", "database")}


@pytest.fixture(scope="session")
def digits_data():
    """scikit-learn's digits under its committed split (`tfhash.data` protocol "digits")."""
    from tfhash.data import load_protocol

    return load_protocol("digits")


@pytest.fixture(scope="session")
def digits_cross_modal(digits_data):
    """The digits as an image-text protocol, for training the image-text methods
    through `tfhash.training.train`: the 8x8 image, the "text" of its 64 pixels
    thresholded to words (on / off) and one-hot labels, on the digits split."""
    import dataclasses

    import numpy as np

    from tfhash.data import CrossModalData
    from tfhash.data.protocols import get_protocol

    images, labels = digits_data.images, digits_data.labels
    protocol = dataclasses.replace(get_protocol("open_clip_art"), name="digits_two_view", description="digits, two views")
    texts = (images.reshape(len(images), -1) >= 128).astype(np.uint8)
    return CrossModalData(protocol, images, texts, np.eye(10, dtype=np.uint8)[labels], digits_data.split)
