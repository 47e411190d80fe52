import gzip
import os
import re
import struct

import numpy as np
import pytest

from tfhash.data import fashion_mnist, load_digits, open_clip_art, pair_similarity, pairwise_batches
from tfhash.data import protocols

needs_fashion_mnist = pytest.mark.needs_data(  # skipped without it; failed under CI (conftest.py)
    fashion_mnist.find_local_dir() is None,
    reason="Debian package dataset-fashion-mnist is not installed",
)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@needs_fashion_mnist
def test_fashion_mnist_from_debian_files():
    images, labels = fashion_mnist.load_fashion_mnist()
    assert images.shape == (70000, 28, 28, 1) and images.dtype == np.uint8
    # Fashion-MNIST has 6,000 training + 1,000 test images of each of 10 classes.
    np.testing.assert_array_equal(np.bincount(labels), [7000] * 10)
    # The first training and the first test image are both ankle boots (class 9).
    assert labels[0] == 9 and labels[60000] == 9
    assert images.max() == 255 and images.min() == 0


def test_read_idx_refuses_foreign_and_truncated_files(tmp_path):
    foreign = tmp_path / "x.gz"
    with gzip.open(foreign, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="not an IDX file: expected magic bytes.*received 89 50"):
        fashion_mnist.read_idx(foreign)
    truncated = tmp_path / "t.gz"
    with gzip.open(truncated, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 7)
    with pytest.raises(ValueError, match=r"truncated or corrupt: header says shape \(10,\).*15 bytes"):
        fashion_mnist.read_idx(truncated)


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not hold the Fashion-MNIST IDX files"):
        fashion_mnist.load_fashion_mnist(str(tmp_path))


def test_digits_are_tiny_uint8_images():
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    assert images.max() == 255 and set(np.unique(labels)) == set(range(10))


@pytest.mark.needs_data(open_clip_art.find_local_dir() is None,
                        reason="Debian packages openclipart-png and openclipart-svg are not installed")
def test_open_clip_art_images_is_open_clip_art_without_texts():
    images_only, pairs = protocols.load_protocol("open_clip_art_images"), protocols.load_protocol("open_clip_art")
    assert images_only.protocol.split_path == pairs.protocol.split_path  # one split file, not a copy
    for part in ("query", "train", "database"):
        np.testing.assert_array_equal(getattr(images_only.split, part), getattr(pairs.split, part))
    np.testing.assert_array_equal(images_only.images, pairs.images)
    np.testing.assert_array_equal(images_only.labels, pairs.labels)


@pytest.mark.parametrize("name", sorted(n for n, p in protocols.PROTOCOLS.items() if p.committed and not p.split_of))
def test_committed_split_is_the_seeded_draw(name, missing_data):
    if name == "fashion_mnist" and fashion_mnist.find_local_dir() is None:
        missing_data("Debian package dataset-fashion-mnist is not installed")
    protocol = protocols.PROTOCOLS[name]
    data = protocols.load_protocol(name)
    split, labels = data.split, data.labels
    # Redrawing from the recorded seed gives the committed indices exactly.
    redrawn = protocols.draw_split(labels, protocol.queries_per_class, protocol.train_per_class, protocol.seed)
    for part in ("query", "train", "database"):
        np.testing.assert_array_equal(getattr(split, part), getattr(redrawn, part))
    # Class balance, disjoint query/database, train inside the database, nothing lost.
    np.testing.assert_array_equal(np.bincount(labels[split.query]), [protocol.queries_per_class] * 10)
    np.testing.assert_array_equal(np.bincount(labels[split.train]), [protocol.train_per_class] * 10)
    assert not np.intersect1d(split.query, split.database).size
    assert np.isin(split.train, split.database).all()
    assert len(split.query) + len(split.database) == len(labels)


def test_fashion_mnist_protocol_sizes():
    split = protocols.load_split(protocols.PROTOCOLS["fashion_mnist"].split_path)
    assert (len(split.query), len(split.train), len(split.database)) == (1000, 5000, 69000)


def test_split_refuses_other_data(tmp_path):
    images, labels = load_digits()
    split = protocols.draw_split(labels, 10, 50, seed=1)
    path = str(tmp_path / "s.npz")
    protocols.save_split(split, path)
    loaded = protocols.load_split(path)
    np.testing.assert_array_equal(loaded.query, split.query)
    loaded.check(labels)
    with pytest.raises(ValueError, match="different dataset or ordering: expected labels with sha256"):
        loaded.check(labels[::-1])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a tfhash split file"):
        protocols.load_split(str(tmp_path / "bad.npz"))


def test_pairwise_batches_are_full_seeded_and_carry_labels():
    images, labels = load_digits()
    first = [y.numpy() for _, y in pairwise_batches(images[:100], labels[:100], 32, seed=3)]
    again = [y.numpy() for _, y in pairwise_batches(images[:100], labels[:100], 32, seed=3)]
    # 100 items, batches of 32, remainder dropped: 3 batches, same order for the same seed.
    assert [len(b) for b in first] == [32, 32, 32]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    multi = np.eye(10, dtype=np.uint8)[labels[:64]]
    x, y = next(iter(pairwise_batches(images[:64], multi, 16, shuffle=False)))
    assert x.shape == (16, 8, 8, 1) and y.shape == (16, 10)


def test_pair_similarity_and_pipeline_errors():
    np.testing.assert_array_equal(pair_similarity([0, 1, 0], [0, 1]), [[1, 0], [0, 1], [1, 0]])
    np.testing.assert_array_equal(pair_similarity([[1, 1], [0, 1]], [[1, 0]]), [[1], [0]])
    images = np.zeros((10, 8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match="same length. Received: 10 images, 9 labels"):
        pairwise_batches(images, np.zeros(9), 4)
    with pytest.raises(ValueError, match=r"batch_size must be in \[2, 10\].*Received: batch_size=1"):
        pairwise_batches(images, np.zeros(10), 1)


@needs_fashion_mnist
def test_tfds_builder_builds_from_local_files(tmp_path):
    import tensorflow_datasets as tfds

    from tfhash.data.tfds_builders import FashionMnistLocal

    # A small copy of the real files: 30 training and 20 test images.
    images, labels = fashion_mnist.load_fashion_mnist()
    manual = tmp_path / "manual"
    manual.mkdir()
    for split, (start, n) in {"train": (0, 30), "test": (60000, 20)}.items():
        image_file, label_file = fashion_mnist.FILES[split]
        _write_idx(manual / image_file, images[start : start + n, ..., 0])
        _write_idx(manual / label_file, labels[start : start + n])
    builder = FashionMnistLocal(data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    assert builder.info.splits["train"].num_examples == 30
    assert builder.info.splits["test"].num_examples == 20
    test = list(tfds.as_numpy(builder.as_dataset(split="test")))
    by_index = {int(e["index"]): e for e in test}
    assert sorted(by_index) == list(range(60000, 60020))
    np.testing.assert_array_equal(by_index[60005]["image"], images[60005])
    assert by_index[60005]["label"] == labels[60005]
    assert os.path.isdir(tmp_path / "tfds" / "fashion_mnist_local")


def test_batches_yield_the_named_fields():
    from tfhash.data import FIELDS, batches

    images, labels = load_digits()
    images, labels = images[:100], labels[:100]
    neighbours = np.random.default_rng(0).integers(-1, 100, (100, 3))
    labelled = np.arange(100) % 4 != 0
    fields = ("images", "labels", "index", "neighbours", "labelled")
    first = next(iter(batches(fields, images=images, labels=labels, neighbours=neighbours, labelled=labelled,
                              batch_size=32, seed=3)))
    assert list(first) == list(fields)
    index = first["index"].numpy().astype(int)
    # Each field is the row at that index; raw images stay uint8, the rest are 32-bit.
    np.testing.assert_array_equal(first["images"].numpy(), images[index])
    assert first["images"].dtype == "uint8" and first["index"].dtype == "float32" and len(set(index)) == 32
    np.testing.assert_array_equal(first["neighbours"].numpy(), neighbours[index])
    np.testing.assert_array_equal(first["labelled"].numpy(), labelled[index])
    # An unlabelled row's label is hidden (0), a labelled row's kept, as int32.
    np.testing.assert_array_equal(first["labels"].numpy(), np.where(labelled[index], labels[index], 0))
    assert first["labels"].dtype == "int32"
    # pairwise_batches is batches of (images, labels) as tuples: the same rows, the same order.
    for (x, y), batch in zip(pairwise_batches(images, labels, 32, seed=3),
                             batches(("images", "labels"), images=images, labels=labels, batch_size=32, seed=3)):
        np.testing.assert_array_equal(x.numpy(), batch["images"].numpy())
        np.testing.assert_array_equal(y.numpy(), batch["labels"].numpy())
    with pytest.raises(ValueError, match=r"Unknown or repeated batch field\(s\) \['idx'\]: each must be one of "
                                         + re.escape(str(FIELDS)) + r". Received: fields=\('images', 'idx'\)"):
        batches(("images", "idx"), images=images, batch_size=8)
    with pytest.raises(ValueError, match=r"The field 'texts' needs its array: pass texts=... Received: texts=None"):
        batches(("images", "texts"), images=images, batch_size=8)
    with pytest.raises(ValueError, match=r"images and neighbours must have the same length. Received: 100 images, "
                                         r"99 neighbours"):
        batches(("images", "neighbours"), images=images, neighbours=neighbours[:99], batch_size=8)
