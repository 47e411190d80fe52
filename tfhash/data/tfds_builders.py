"""TFDS builders that read local files, so `tfds` works offline.

Importing this module registers the builders; then
`tfds.load("fashion_mnist_local", data_dir=...)` or
`tfds.load("open_clip_art_local", data_dir=...)` builds from the Debian files
(or from `download_config=tfds.download.DownloadConfig(manual_dir=...)`).
The stock `fashion_mnist` builder downloads and checks checksums of the
original gzip files, which the Debian re-gzipped copies fail.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from tfhash.data import fashion_mnist, open_clip_art


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST built from local IDX files; `index` is the 0..69999 position."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Built from local IDX files (Debian dataset-fashion-mnist)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Install the Debian package `dataset-fashion-mnist`, or put the four IDX .gz "
        "files (train-images-idx3-ubyte.gz, ...) in the manual directory."
    )

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(names=fashion_mnist.CLASS_NAMES),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager):
        try:
            manual = os.fspath(dl_manager.manual_dir)
        except AssertionError:  # No manual dir given, or it is empty: use the defaults.
            manual = None
        directory = fashion_mnist.find_local_dir(manual)
        if directory is None:
            raise FileNotFoundError(self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        return {
            "train": self._generate_examples(directory, "train", offset=0),
            "test": self._generate_examples(directory, "test", offset=60000),
        }

    def _generate_examples(self, directory, split, offset):
        images, labels = fashion_mnist.load_split(directory, split)
        for i, (image, label) in enumerate(zip(images, labels)):
            yield offset + i, {"image": image, "label": int(label), "index": offset + i}


class OpenClipArtLocal(tfds.core.GeneratorBasedBuilder):
    """Open Clip Art image-text items built from the local PNG and SVG trees.

    Items are those of `tfhash.data.open_clip_art.load_items` (symlinked
    duplicates merged, items without vocabulary words dropped), in order;
    `index` is the position the committed `open_clip_art` split refers to.
    Everything goes to one split, `train`: TFDS reserves the name `all` for the
    union of a builder's splits, so `split="all"` reads the same items.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Built from local files (Debian openclipart-png, openclipart-svg 0.18)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Install the Debian packages `openclipart-png` and `openclipart-svg`, or give a "
        "manual directory holding their `png/` and `svg/` trees."
    )
    IMAGE_SIZE = 64

    def _info(self):
        vocabulary = open_clip_art.load_vocabulary()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(self.IMAGE_SIZE, self.IMAGE_SIZE, 3)),
                    "text": tfds.features.Text(),
                    "bow": tfds.features.Tensor(shape=(len(vocabulary["words"]),), dtype=np.uint8),
                    "labels": tfds.features.Tensor(shape=(len(vocabulary["label_names"]),), dtype=np.uint8),
                    "category": tfds.features.ClassLabel(names=vocabulary["categories"]),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "labels"),
            homepage="https://openclipart.org",
        )

    def _split_generators(self, dl_manager):
        try:
            manual = os.fspath(dl_manager.manual_dir)
        except AssertionError:  # No manual dir given, or it is empty: use the defaults.
            manual = None
        directory = open_clip_art.find_local_dir(manual)
        if directory is None:
            raise FileNotFoundError(self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        return {"train": self._generate_examples(directory)}

    def _generate_examples(self, directory):
        items, texts, labels = open_clip_art.load_items(directory)
        for i, item in enumerate(items):
            png = os.path.join(directory, "png", f"{item.name}.png")
            yield i, {
                "image": open_clip_art.decode_image(png, self.IMAGE_SIZE),
                "text": item.text,
                "bow": texts[i],
                "labels": labels[i],
                "category": item.category,
                "index": i,
            }
