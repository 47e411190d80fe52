"""Fashion-MNIST (Xiao et al., 2017), all 70,000 images, read from local files.

Order: the 60,000 training images then the 10,000 test images, so an image's
index is stable across sources and the committed protocol splits refer to it.
Sources, first found wins: `data_dir`, `$TFHASH_FASHION_MNIST_DIR`, the Debian
package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), and last
`keras.datasets.fashion_mnist` (downloads; needs network).
"""

import gzip
import os
import struct

import numpy as np

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "TFHASH_FASHION_MNIST_DIR"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Reads an IDX file (the MNIST format), gzipped or not, into a NumPy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path} is not an IDX file: expected magic bytes 00 00 <dtype> <ndim>, "
            f"received {data[:4].hex(' ') or 'an empty file'}"
        )
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: header says shape {shape} "
            f"({expected} bytes), file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)


def find_local_dir(data_dir=None):
    """Returns the first directory holding the four IDX files, or None."""
    names = [name for pair in FILES.values() for name in pair]
    # An explicit data_dir is the only candidate: never fall back behind the user's back.
    candidates = [data_dir] if data_dir else [os.environ.get(ENV_VAR), DEBIAN_DIR]
    for candidate in candidates:
        if candidate and all(os.path.exists(os.path.join(candidate, n)) for n in names):
            return candidate
    if data_dir:
        raise FileNotFoundError(
            f"data_dir={data_dir!r} does not hold the Fashion-MNIST IDX files "
            f"{sorted(names)}"
        )
    return None


def load_split(directory, split):
    images_file, labels_file = FILES[split]
    images = read_idx(os.path.join(directory, images_file))
    labels = read_idx(os.path.join(directory, labels_file))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{directory}: {images.shape[0]} {split} images but {labels.shape[0]} labels"
        )
    return images[..., None], labels


def load_fashion_mnist(data_dir=None):
    """Loads all 70,000 Fashion-MNIST images.

    Args:
        data_dir: optional directory holding the four IDX `.gz` files.

    Returns:
        `(images, labels)`: uint8 (70000, 28, 28, 1) and uint8 (70000,).
    """
    directory = find_local_dir(data_dir)
    if directory is not None:
        parts = [load_split(directory, split) for split in ("train", "test")]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as error:  # No network: say how to get the data offline.
        raise FileNotFoundError(
            "Fashion-MNIST not found locally and the download failed "
            f"({type(error).__name__}: {error}). Install the Debian package "
            f"`dataset-fashion-mnist` (files in {DEBIAN_DIR}), or set ${ENV_VAR} "
            "to a directory holding the four IDX .gz files."
        ) from error
    images = np.concatenate([x_train, x_test])[..., None]
    return images, np.concatenate([y_train, y_test]).astype(np.uint8)
