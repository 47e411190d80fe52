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

from tfhash.io import cache_dir, save_arrays

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


DATABASES = ("non_query", "rest", "train")


def _database(n, query, train, database):
    """The database under one of the conventions public code uses:
    "non_query" (every non-query item, training items included), "rest" (the
    items neither query nor train) or "train" (the training items)."""
    if database == "non_query":
        return np.setdiff1d(np.arange(n), query)
    if database == "rest":
        return np.setdiff1d(np.arange(n), np.concatenate([query, train]))
    if database == "train":
        return np.sort(train)
    raise ValueError(f"database must be one of {DATABASES}. Received: database={database!r}")


def draw_split(labels, queries_per_class, train_per_class, seed, database="non_query"):
    """Draws a class-balanced split: queries from everything, train from the rest.

    By default the database is every non-query item (the CIFAR-10 "all"
    convention) and the training set is drawn from it; `database` picks
    another convention (see `_database`).
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
    query, train = np.sort(np.concatenate(query)), np.sort(np.concatenate(train))
    return Split(
        query=query,
        train=train,
        database=_database(len(labels), query, train, database),
        seed=seed,
        labels_sha256=labels_sha256(labels),
    )


def save_split(split, path):
    """Writes a split atomically (`tfhash.io.save_arrays`)."""
    save_arrays(
        path,
        compressed=True,
        format_version=np.int64(FORMAT_VERSION),
        query=split.query.astype(np.int64),
        train=split.train.astype(np.int64),
        database=split.database.astype(np.int64),
        seed=np.int64(split.seed),
        labels_sha256=np.array(split.labels_sha256),
    )


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


def draw_random_split(labels, num_query, num_train, seed, database="non_query"):
    """Draws a random split: queries from everything, train from the rest.

    For multi-label data, which has no classes to balance (the MIRFlickr-25K
    convention of DCMH / SSAH). The database is every non-query item and the
    training set is drawn from the database.

    Args:
        labels: one row per item (only its length and hash are used).
        num_query, num_train: split sizes.
        seed: NumPy `default_rng` seed.
    """
    n = len(labels)
    if num_query < 1 or num_train < 1 or num_query + num_train > n:
        raise ValueError(
            f"num_query and num_train must be positive and sum to at most {n} items. "
            f"Received: num_query={num_query}, num_train={num_train}"
        )
    order = np.random.default_rng(seed).permutation(n)
    query, train = np.sort(order[:num_query]), np.sort(order[num_query : num_query + num_train])
    return Split(
        query=query,
        train=train,
        database=_database(n, query, train, database),
        seed=seed,
        labels_sha256=labels_sha256(labels),
    )


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a dataset is split and scored.

    A split is drawn one of two ways: class-balanced (`queries_per_class`,
    `train_per_class`, for single-label data) or at random (`num_query`,
    `num_train`, for multi-label data). Exactly one pair is set.
    `modalities` is `("image",)` for protocols whose loader returns
    `(images, labels)`, `("image", "text")` for cross-modal ones whose loader
    returns `(images, texts, labels)`.
    """

    name: str
    loader: str  # "module:function" returning (images, labels) or (images, texts, labels)
    seed: int
    description: str
    queries_per_class: int | None = None
    train_per_class: int | None = None
    num_query: int | None = None
    num_train: int | None = None
    modalities: tuple = ("image",)
    # Database convention (see `_database`) and the metric variant the papers report.
    database: str = "non_query"
    map_k: int | None = None
    normalization: str = "retrieved"
    # False for datasets this project cannot ship or read: the split is drawn
    # from the seed on the user's first load and saved in their cache.
    committed: bool = True
    # Another protocol whose split file this one reads (same items, other modalities).
    split_of: str | None = None

    def __post_init__(self):
        per_class = (self.queries_per_class, self.train_per_class)
        random = (self.num_query, self.num_train)
        if (None in per_class) == (None in random) or not (
            all(v is None for v in per_class) or all(v is None for v in random)
        ):
            raise ValueError(
                f"Protocol {self.name!r}: expected either queries_per_class and train_per_class "
                "(class-balanced draw) or num_query and num_train (random draw). "
                f"Received: queries_per_class={per_class[0]}, train_per_class={per_class[1]}, "
                f"num_query={random[0]}, num_train={random[1]}"
            )

        if self.database not in DATABASES:
            raise ValueError(f"Protocol {self.name!r}: database must be one of {DATABASES}. "
                             f"Received: database={self.database!r}")

    @property
    def cross_modal(self):
        return "text" in self.modalities

    @property
    def class_balanced(self):
        return self.queries_per_class is not None

    def draw(self, labels):
        """Draws this protocol's split of `labels` from its seed."""
        if self.class_balanced:
            return draw_split(labels, self.queries_per_class, self.train_per_class, self.seed, self.database)
        return draw_random_split(labels, self.num_query, self.num_train, self.seed, self.database)

    @property
    def split_path(self):
        name = self.split_of or self.name
        if self.committed:
            return os.path.join(SPLITS_DIR, f"{name}.npz")
        return os.path.join(cache_dir(), "splits", f"{name}.npz")

    @property
    def metric_options(self):
        """`tfhash.metrics.evaluate` options giving the papers' metric variant."""
        return {"map_k": self.map_k, "normalization": self.normalization}


# Image protocols: load_protocol returns RetrievalData.
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

# The standard benchmarks of the papers, for users with the data. Their
# splits are drawn from the seed on first load (`committed=False`), so every
# user with the same files gets the same split.
_CIFAR10 = "tfhash.data.cifar10:load_cifar10"
PROTOCOLS.update(
    {
        "cifar10_54000": Protocol(
            name="cifar10_54000", loader=_CIFAR10, queries_per_class=100, train_per_class=500, seed=20261122,
            database="rest", committed=False,
            description="CIFAR-10, all 60,000 images (TFDS cifar10): 1,000 queries (100 per class), 5,000 "
            "training images (500 per class), database = the other 54,000; mAP@all (= @54,000). "
            "thulab/DeepHash, DPSH; DeepHash-pytorch's 'cifar10'.",
        ),
        "cifar10_59000": Protocol(
            name="cifar10_59000", loader=_CIFAR10, queries_per_class=100, train_per_class=500, seed=20261122,
            database="non_query", committed=False,
            description="CIFAR-10, all 60,000 images: 1,000 queries (100 per class), 5,000 training images "
            "(500 per class), database = the 59,000 non-query images, training images included; mAP@all. "
            "DeepHash-pytorch's 'cifar10-1'.",
        ),
        "cifar10_50000": Protocol(
            name="cifar10_50000", loader=_CIFAR10, queries_per_class=1000, train_per_class=5000, seed=20261122,
            database="train", committed=False,
            description="CIFAR-10, all 60,000 images: 10,000 queries (1,000 per class), 50,000 training "
            "images, database = the training images; mAP@all (= @50,000). DeepHash-pytorch's 'cifar10-2'.",
        ),
        "coco": Protocol(
            name="coco", loader="tfhash.data.coco:load_coco", num_query=5000, num_train=10000, seed=20261122,
            map_k=5000, committed=False,
            description="MS-COCO 2014 via TFDS, the 122,218 train2014 + val2014 images with an object, "
            "80 multi-hot categories: 5,000 random queries, 10,000 training images from the database, "
            "database = the 117,218 non-query images; mAP@5000 over relevant items retrieved "
            "(HashNet, DeepHash-pytorch).",
        ),
        "nus_wide_21": Protocol(
            name="nus_wide_21", loader="tfhash.data.mat_builders:load_nus_wide_21_images", num_query=2100,
            num_train=10500, seed=20261122, map_k=5000, committed=False,
            description="NUS-WIDE, the 21 most frequent concepts (DCMH's TC-21 .mat files): 2,100 random "
            "queries, 10,500 training images from the database, database = every non-query image; "
            "mAP@5000 over relevant items retrieved (thulab/DeepHash, DeepHash-pytorch).",
        ),
    }
)

# Image-text protocols: load_protocol returns CrossModalData.
CROSS_MODAL_PROTOCOLS = {
    "open_clip_art": Protocol(
        name="open_clip_art",
        loader="tfhash.data.open_clip_art:load_open_clip_art",
        num_query=2000,
        num_train=4000,
        seed=20261122,
        modalities=("image", "text"),
        description="Open Clip Art (Debian openclipart-png / openclipart-svg), 6,886 image-text "
        "items (8,121 files less symlinked duplicates and 13 without vocabulary words), "
        "1,021-word binary bag of words, 71 labels (22 categories + 49 tags): 2,000 random "
        "queries, 4,000 training items from the database, database = the 4,886 non-query "
        "items; mAP@all, image->text and text->image.",
    ),
    "mirflickr25k": Protocol(
        name="mirflickr25k",
        loader="tfhash.data.mat_builders:load_mirflickr25k",
        num_query=2000,
        num_train=10000,
        seed=20261122,
        modalities=("image", "text"),
        committed=False,
        description="MIRFlickr-25K, DCMH's 20,015 pairs (1,386-d BoW, 24 labels, .mat files): 2,000 random "
        "queries, 10,000 training pairs from the retrieval set, database = the 18,015 non-query pairs; "
        "mAP@all, image->text and text->image (DCMH, SSAH).",
    ),
}

# An image-text dataset's images alone, for image-only methods: the same
# draw (read from the other's split file), so the numbers cannot drift apart.
PROTOCOLS["open_clip_art_images"] = dataclasses.replace(
    CROSS_MODAL_PROTOCOLS["open_clip_art"],
    name="open_clip_art_images",
    loader="tfhash.data.open_clip_art:load_open_clip_art_images",
    modalities=("image",),
    split_of="open_clip_art",
    description="Open Clip Art's images alone, on the open_clip_art split (same 2,000 queries, "
    "4,000 training items, 4,886-item database): image->image retrieval, relevant = sharing a "
    "label; mAP@all.",
)


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


@dataclasses.dataclass(frozen=True)
class CrossModalData:
    """An image-text dataset loaded with its committed split.

    Attributes:
        protocol, split: as in `RetrievalData`.
        images: uint8 (n, H, W, 3).
        texts: uint8 (n, V) binary bag of words.
        labels: uint8 (n, C) multi-hot.
        vocabulary: the V words, in `texts` column order.
        label_names: the C label names, in `labels` column order.
    """

    protocol: Protocol
    images: np.ndarray
    texts: np.ndarray
    labels: np.ndarray
    split: Split
    vocabulary: tuple = ()
    label_names: tuple = ()

    def subset(self, part):
        """(images, texts, labels) of "query", "train" or "database"."""
        idx = getattr(self.split, part)
        return self.images[idx], self.texts[idx], self.labels[idx]


def get_protocol(name):
    registry = {**PROTOCOLS, **CROSS_MODAL_PROTOCOLS}
    if name not in registry:
        # A folder or a list file named as a protocol: the user's own images.
        hint = " (your own images: --images PATH, or tfhash.data.from_path)" if os.path.exists(name) else ""
        raise ValueError(f"Unknown protocol {name!r}. Expected one of {sorted(registry)}{hint}.")
    return registry[name]


def load_protocol(name, data_dir=None, **loader_options):
    """Loads a dataset and its committed split, checking they belong together.

    Args:
        name: a key of `PROTOCOLS` ("fashion_mnist", "digits") or of
            `CROSS_MODAL_PROTOCOLS` ("open_clip_art").
        data_dir: passed to loaders that read local files.
        **loader_options: passed to the loader, e.g. `image_size=64` for
            "open_clip_art".

    Returns:
        `RetrievalData`, or `CrossModalData` for a cross-modal protocol.
    """
    protocol = get_protocol(name)
    arrays = _call_loader(protocol.loader, data_dir, **loader_options)
    if not protocol.committed and not os.path.exists(protocol.split_path):
        # First load of data we cannot ship: draw from the seed once and keep it.
        os.makedirs(os.path.dirname(protocol.split_path), exist_ok=True)
        save_split(protocol.draw(arrays[-1]), protocol.split_path)
    split = load_split(protocol.split_path)
    split.check(arrays[-1])
    if not protocol.cross_modal:
        return RetrievalData(protocol, *arrays, split)
    module = _loader_module(protocol.loader)
    if not hasattr(module, "load_vocabulary"):  # .mat files carry no word list
        return CrossModalData(protocol, *arrays, split)
    vocabulary = module.load_vocabulary()
    return CrossModalData(
        protocol, *arrays, split,
        vocabulary=tuple(vocabulary["words"]),
        label_names=tuple(vocabulary["label_names"]),
    )


def _loader_module(spec):
    import importlib

    return importlib.import_module(spec.split(":")[0])


def _call_loader(spec, data_dir, **options):
    loader = getattr(_loader_module(spec), spec.split(":")[1])
    return loader(data_dir, **options) if data_dir is not None else loader(**options)


def write_committed_split(name, data_dir=None):
    """Redraws a protocol's split from its seed and writes the committed file."""
    protocol = get_protocol(name)
    split = protocol.draw(_labels_only(protocol, data_dir))
    save_split(split, protocol.split_path)
    return split


def _labels_only(protocol, data_dir=None):
    """A protocol's labels; cross-modal loaders offer `load_labels`, which skips the images."""
    if protocol.cross_modal:
        return _loader_module(protocol.loader).load_labels(data_dir)
    return _call_loader(protocol.loader, data_dir)[-1]
