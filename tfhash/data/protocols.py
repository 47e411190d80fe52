"""Retrieval protocols: datasets with seeded query / train / database splits.

Published hashing numbers are only comparable under the same split, and public
code draws splits afresh on every run. Here a split is drawn once from a seed,
saved as an index file (`.npz`, loaded with `allow_pickle=False`) committed in
`tfhash/data/splits/`, and checked against the data it indexes (a hash of the
labels) every time it is loaded.
"""

import dataclasses
import hashlib
import os

import numpy as np

SPLITS_DIR = os.path.join(os.path.dirname(__file__), "splits")
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Split:
    """Index lists into a dataset. `train` is a subset of `database`."""

    query: np.ndarray
    train: np.ndarray
    database: np.ndarray
    seed: int
    labels_sha256: str

    def check(self, labels):
        """Raises ValueError if `labels` is not the data this split was drawn on."""
        found = labels_sha256(labels)
        if found != self.labels_sha256:
            raise ValueError(
                "This split indexes a different dataset or ordering: expected labels "
                f"with sha256 {self.labels_sha256}, received {found} "
                f"({len(labels)} labels)."
            )


def labels_sha256(labels):
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def draw_split(labels, queries_per_class, train_per_class, seed):
    """Draws a class-balanced split: queries from everything, train from the rest.

    The database is every non-query item (the CIFAR-10 "all" convention), and
    the training set is drawn from the database.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    query, train = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        need = queries_per_class + train_per_class
        if len(members) < need:
            raise ValueError(
                f"class {c} has {len(members)} items, fewer than the {need} the split needs"
            )
        query.append(members[:queries_per_class])
        train.append(members[queries_per_class:need])
    query = np.sort(np.concatenate(query))
    database = np.setdiff1d(np.arange(len(labels)), query)
    return Split(
        query=query,
        train=np.sort(np.concatenate(train)),
        database=database,
        seed=seed,
        labels_sha256=labels_sha256(labels),
    )


def save_split(split, path):
    """Writes a split atomically (temp file + rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            format_version=np.int64(FORMAT_VERSION),
            query=split.query.astype(np.int64),
            train=split.train.astype(np.int64),
            database=split.database.astype(np.int64),
            seed=np.int64(split.seed),
            labels_sha256=np.array(split.labels_sha256),
        )
    os.replace(tmp, path)


def load_split(path):
    """Reads a split written by `save_split`; refuses anything else clearly."""
    try:
        with np.load(path, allow_pickle=False) as f:
            fields = {key: f[key] for key in f.files}
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path} is not a tfhash split file (.npz): {error}") from error
    missing = {"format_version", "query", "train", "database", "seed", "labels_sha256"} - set(fields)
    if missing:
        raise ValueError(f"{path} is not a tfhash split file: missing {sorted(missing)}")
    version = int(fields["format_version"])
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: split format version {version}, expected {FORMAT_VERSION}")
    return Split(
        query=fields["query"],
        train=fields["train"],
        database=fields["database"],
        seed=int(fields["seed"]),
        labels_sha256=str(fields["labels_sha256"]),
    )


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a dataset is split and scored."""

    name: str
    loader: str  # "module:function" returning (images, labels)
    queries_per_class: int
    train_per_class: int
    seed: int
    description: str

    @property
    def split_path(self):
        return os.path.join(SPLITS_DIR, f"{self.name}.npz")


PROTOCOLS = {
    "fashion_mnist": Protocol(
        name="fashion_mnist",
        loader="tfhash.data.fashion_mnist:load_fashion_mnist",
        queries_per_class=100,
        train_per_class=500,
        seed=20261122,
        description="Fashion-MNIST, all 70,000 images: 1,000 queries (100 per class), "
        "5,000 training images (500 per class) from the database, "
        "database = the 69,000 non-query images; mAP@all.",
    ),
    "digits": Protocol(
        name="digits",
        loader="tfhash.data.digits:load_digits",
        queries_per_class=10,
        train_per_class=50,
        seed=20261122,
        description="scikit-learn digits, 1,797 8x8 images: 100 queries (10 per class), "
        "500 training images (50 per class), database = the 1,697 non-query images.",
    ),
}


@dataclasses.dataclass(frozen=True)
class RetrievalData:
    """A dataset loaded with its committed split."""

    protocol: Protocol
    images: np.ndarray
    labels: np.ndarray
    split: Split

    def subset(self, part):
        """(images, labels) of "query", "train" or "database"."""
        idx = getattr(self.split, part)
        return self.images[idx], self.labels[idx]


def get_protocol(name):
    if name not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {name!r}. Expected one of {sorted(PROTOCOLS)}.")
    return PROTOCOLS[name]


def load_protocol(name, data_dir=None):
    """Loads a dataset and its committed split, checking they belong together.

    Args:
        name: a key of `PROTOCOLS`, e.g. "fashion_mnist" or "digits".
        data_dir: passed to loaders that read local files.

    Returns:
        `RetrievalData`.
    """
    protocol = get_protocol(name)
    images, labels = _call_loader(protocol.loader, data_dir)
    split = load_split(protocol.split_path)
    split.check(labels)
    return RetrievalData(protocol, images, labels, split)


def _call_loader(spec, data_dir):
    import importlib

    module, function = spec.split(":")
    loader = getattr(importlib.import_module(module), function)
    return loader(data_dir) if data_dir is not None else loader()


def write_committed_split(name, data_dir=None):
    """Redraws a protocol's split from its seed and writes the committed file."""
    protocol = get_protocol(name)
    _, labels = _call_loader(protocol.loader, data_dir)
    split = draw_split(labels, protocol.queries_per_class, protocol.train_per_class, protocol.seed)
    save_split(split, protocol.split_path)
    return split
