"""The standard benchmark protocols (CIFAR-10's three conventions, NUS-WIDE-21,
MIRFlickr-25K) for users with the data: database conventions, split sizes,
draw-once splits kept in the user's cache, the papers' metric variant, and the
CIFAR-10 loader on TFDS mock data (no download)."""

import dataclasses

import numpy as np
import pytest

from tfhash import metrics
from tfhash.data import load_protocol, protocols
from tfhash.data.cifar10 import load_cifar10
from tfhash.evaluation import evaluate_model
from tfhash.models import DHN


@pytest.mark.parametrize(
    "name, queries, train, database",
    [
        # DeepHash-pytorch "cifar10": the database excludes queries and training images.
        ("cifar10_54000", 1000, 5000, 54000),
        # "cifar10-1": every non-query image, training images included.
        ("cifar10_59000", 1000, 5000, 59000),
        # "cifar10-2": 1,000 queries per class; the database is the training set.
        ("cifar10_50000", 10000, 50000, 50000),
    ],
)
def test_cifar10_conventions_give_the_published_sizes(name, queries, train, database):
    labels = np.repeat(np.arange(10), 6000)  # CIFAR-10's 60,000 images, 6,000 per class
    protocol = protocols.get_protocol(name)
    split = protocol.draw(labels)
    assert (len(split.query), len(split.train), len(split.database)) == (queries, train, database)
    assert np.all(np.bincount(labels[split.query]) == queries // 10)
    assert not np.intersect1d(split.query, split.database).size
    if protocol.database == "rest":
        assert not np.intersect1d(split.train, split.database).size
    else:
        assert np.isin(split.train, split.database).all()
    assert protocol.map_k is None and protocol.normalization == "retrieved" and not protocol.committed


def test_multi_label_benchmarks_and_their_metric():
    nus, mir = protocols.get_protocol("nus_wide_21"), protocols.get_protocol("mirflickr25k")
    assert (nus.num_query, nus.num_train, nus.map_k) == (2100, 10500, 5000)
    assert (mir.num_query, mir.num_train, mir.map_k, mir.cross_modal) == (2000, 10000, None, True)
    split = mir.draw(np.zeros((20015, 24)))
    assert (len(split.query), len(split.train), len(split.database)) == (2000, 10000, 18015)
    with pytest.raises(ValueError, match=r"pass data_dir .*Received: data_dir=None"):
        load_protocol("mirflickr25k")


def test_unknown_database_convention_is_refused():
    with pytest.raises(ValueError, match=r"database must be one of \('non_query', 'rest', 'train'\). Received: database='all'"):
        protocols.draw_split(np.repeat(np.arange(2), 10), 1, 2, seed=0, database="all")


def test_cifar10_loader_reads_train_then_test_through_tfds(monkeypatch):
    import tensorflow_datasets as tfds

    from tfhash.data import remote

    # mock_data serves the examples in place of a download; the offline check would refuse first.
    monkeypatch.setattr(remote, "reachable", lambda url, timeout=remote.PROBE_SECONDS: True)
    with tfds.testing.mock_data(num_examples=7):
        images, labels = load_cifar10()
    assert images.shape == (14, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (14,) and labels.dtype == np.int64 and labels.max() < 10


def test_uncommitted_splits_are_drawn_once_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHASH_CACHE_DIR", str(tmp_path))
    # The digits data under an uncommitted protocol: the first load draws and saves.
    protocol = dataclasses.replace(protocols.PROTOCOLS["digits"], name="digits_uncommitted", committed=False,
                                   database="rest")
    monkeypatch.setitem(protocols.PROTOCOLS, protocol.name, protocol)
    assert protocol.split_path == str(tmp_path / "splits" / "digits_uncommitted.npz")
    first = load_protocol(protocol.name)
    saved = protocols.load_split(protocol.split_path)
    np.testing.assert_array_equal(saved.query, first.split.query)
    assert len(first.split.database) == 1797 - 100 - 500  # "rest"
    # Later loads read the saved file: spoil it and the load says so.
    protocols.save_split(dataclasses.replace(saved, labels_sha256="0" * 64), protocol.split_path)
    with pytest.raises(ValueError, match="This split indexes a different dataset"):
        load_protocol(protocol.name)


def test_evaluation_uses_the_protocols_metric_variant(monkeypatch):
    data = load_protocol("digits")
    data = dataclasses.replace(data, protocol=dataclasses.replace(data.protocol, map_k=50,
                                                                  normalization="min_k_relevant"))
    model = DHN(bits=16, input_shape=(8, 8, 1))
    result, query_codes, database_codes = evaluate_model(model, data, curve=False)
    query_labels, database_labels = data.labels[data.split.query], data.labels[data.split.database]
    expected = metrics.mean_average_precision(query_codes, database_codes, query_labels, database_labels, k=50,
                                              normalization="min_k_relevant")
    assert result["map_k"] == 50 and result["map"] == pytest.approx(expected)
    # An explicit option still wins.
    result, _, _ = evaluate_model(model, data, curve=False, map_k=None)
    assert result["map_k"] == "all"


def test_coco_loader_keeps_labelled_images_as_multi_hot_rows(monkeypatch):
    import tensorflow_datasets as tfds

    from tfhash.data import remote
    from tfhash.data.coco import load_coco

    monkeypatch.setattr(remote, "reachable", lambda url, timeout=remote.PROBE_SECONDS: True)  # as above

    with tfds.testing.mock_data(num_examples=6):
        images, labels = load_coco(image_size=16)
    # Mock examples have random objects; every kept row has at least one of the 80 labels.
    assert images.shape[1:] == (16, 16, 3) and images.dtype == np.uint8
    assert labels.shape == (len(images), 80) and labels.dtype == np.uint8
    assert 0 < len(images) <= 12 and labels.any(axis=1).all() and set(np.unique(labels)) <= {0, 1}
    coco = protocols.get_protocol("coco")
    assert (coco.num_query, coco.num_train, coco.map_k) == (5000, 10000, 5000)
    split = coco.draw(np.zeros((122218, 80)))
    assert (len(split.query), len(split.train), len(split.database)) == (5000, 10000, 117218)
