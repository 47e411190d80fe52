"""tf.data pipelines: batches of named fields, what a method eats.

A pairwise loss needs labels beside the images: the models derive the pair
similarity S_ij inside the train step from the labels of the whole (gathered)
batch (`tfhash.losses.label_similarity`), single-label class ids and
multi-hot labels alike. One function, `batches`, yields dicts of the fields a
method names (`FIELDS`: images, labels, the row's index, neighbour lists,
texts, labelled flags); the builders the README shows (`pairwise_batches`,
`neighbour_batches`, `semi_supervised_batches`, `cross_modal_batches`) are
calls of it in the tuple or dict shape their trainers take. Two are not:
`graph_batches` draws related rows per row and epoch, and a partly labelled
`semi_supervised_batches` fixes the labelled rows of each batch.
"""

import numpy as np
import tensorflow as tf

from tfhash.losses import label_similarity


# The fields a batch can carry (`batches`).
FIELDS = ("images", "labels", "index", "neighbours", "texts", "labelled")


def batches(fields, *, images, labels=None, texts=None, neighbours=None, labelled=None, batch_size, seed=0,
            shuffle=True, repeat=False):
    """Batches of the named fields, as dicts {field: (batch, ...) tensor}.

    Fields, one line each:
    - "images": the images (or a frozen trunk's features) as given: raw uint8 pixels stay uint8.
    - "labels": class ids (int32) or multi-hot rows (float32 if given as floats, else int32);
      zeros in the rows `labelled` marks False, so an unlabelled row cannot leak its label.
    - "index": the row's position in the arrays given, float32 (exact below 2**24, gatherable
      across replicas): it addresses a per-sample memory (DPSH's U, DSDH's B, SSAH's).
    - "neighbours": the row's (m,) neighbour list over the same rows, -1 padded, float32.
    - "texts": the row's bag of words (V,), float32.
    - "labelled": 1.0 where the row's labels may be used, else 0.0 (float32).

    Batches are full (`drop_remainder=True`), so every replica of a
    distribution strategy gets an equal share and every batch has the same
    number of pairs. The shuffle is seeded: the order is reproducible run to run.

    Args:
        fields: the names, a tuple of `FIELDS`.
        images: (n, height, width, channels) images, or (n, d) features.
        labels: (n,) class ids or (n, c) multi-hot labels.
        texts: (n, V) bags of words.
        neighbours: (n, m) int neighbour lists, e.g.
            `tfhash.neighbours.neighbour_structure(features)`.
        labelled: (n,) boolean mask of the rows whose labels are kept (default: all).
        batch_size: global batch size, in [2, n].
        seed: shuffle seed.
        shuffle: reshuffle each epoch (seeded).
        repeat: repeat forever (pass `steps_per_epoch` to `fit`).

    Returns:
        A `tf.data.Dataset` of dicts.

    Examples:
    >>> ds = batches(("images", "labels", "index"), images=images, labels=labels, batch_size=64)
    >>> next(iter(ds))["index"].shape
    TensorShape([64])
    """
    if isinstance(fields, str) or not all(isinstance(field, str) for field in fields):
        raise ValueError(f"fields must be a tuple of field names. Received: fields={fields!r}")
    unknown = [field for field in fields if field not in FIELDS]
    if unknown or len(set(fields)) != len(fields):
        raise ValueError(f"Unknown or repeated batch field(s) {unknown or list(fields)}: each must be one of {FIELDS}. "
                         f"Received: fields={tuple(fields)}")
    images = np.asarray(images)
    n = len(images)
    given = {"labels": labels, "texts": texts, "neighbours": neighbours}
    for field in given:
        if field in fields and given[field] is None:
            raise ValueError(f"The field {field!r} needs its array: pass {field}=... Received: {field}=None")
    given = {field: np.asarray(array) for field, array in given.items() if field in fields}
    if any(len(array) != n for array in given.values()):
        names = ["images", *given]
        raise ValueError(f"{', '.join(names[:-1])} and {names[-1]} must have the same length. Received: "
                         + ", ".join(f"{len(array)} {name}" for name, array in zip(names, [images, *given.values()])))
    if "labels" in given and given["labels"].ndim not in (1, 2):
        raise ValueError(f"labels must be class ids (n,) or multi-hot (n, classes). Received shape {given['labels'].shape}")
    if "neighbours" in given and given["neighbours"].ndim != 2:
        raise ValueError(f"neighbours must be (n, m) lists for the {n} images. Received: shape={given['neighbours'].shape}")
    if "texts" in given and given["texts"].ndim != 2:
        raise ValueError(f"texts must be bag-of-words vectors (n, vocabulary_size). Received: shape={given['texts'].shape}")
    if labelled is None:
        labelled = np.ones(n, bool)
    labelled = np.asarray(labelled)
    if labelled.shape != (n,) or labelled.dtype != bool:
        raise ValueError(f"labelled must be a boolean mask of shape ({n},). "
                         f"Received: shape={labelled.shape}, dtype={labelled.dtype}")
    if batch_size < 2 or batch_size > n:
        raise ValueError(f"batch_size must be in [2, {n}] (pairs need two items). Received: batch_size={batch_size}")

    rows = {}
    for field in fields:
        if field == "images":
            rows[field] = images
        elif field == "labels":
            # Cross-replica collectives (all_gather, and Keras's build-time reduce under
            # MultiWorkerMirroredStrategy) accept 32/64-bit types only, not uint8.
            kept = np.where(labelled.reshape(-1, *[1] * (given["labels"].ndim - 1)), given["labels"], 0)
            rows[field] = kept.astype(np.float32 if np.issubdtype(kept.dtype, np.floating) else np.int32)
        elif field == "index":
            rows[field] = np.arange(n, dtype=np.float32)  # float32: exact below 2**24, gatherable
        elif field == "labelled":
            rows[field] = labelled.astype(np.float32)
        else:
            rows[field] = given[field].astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices(rows)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return _shard_by_data(ds.batch(batch_size, drop_remainder=True))


def _tuples(ds, shape):
    """`batches`' dicts as the tuples a trainer takes: `shape` maps a dict of
    fields to a tuple; images as float32 (exact for 0-255 pixels)."""
    return ds.map(lambda batch: shape({**batch, "images": tf.cast(batch["images"], "float32")}))


def pairwise_batches(images, labels, batch_size, *, seed=0, shuffle=True, repeat=False):
    """Batches of `(images, labels)` for pairwise losses: `batches` of
    ("images", "labels") as tuples, images as float32.

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
    ds = batches(("images", "labels"), images=images, labels=labels, batch_size=batch_size, seed=seed,
                 shuffle=shuffle, repeat=repeat)
    return _tuples(ds, lambda b: (b["images"], b["labels"]))


def _shard_by_data(ds):
    """Prefetches, and lets each worker of a multi-worker strategy read the same
    seeded stream and keep its share of every batch."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def neighbour_batches(images, neighbours, batch_size, *, seed=0, shuffle=True):
    """Batches of `(images, (ids, neighbour_lists))` for unsupervised models:
    `batches` of ("images", "index", "neighbours") as tuples, images as float32.

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
    ds = batches(("images", "index", "neighbours"), images=images, neighbours=neighbours, batch_size=batch_size,
                 seed=seed, shuffle=shuffle)
    return _tuples(ds, lambda b: (b["images"], (b["index"], b["neighbours"])))


def _label_type(labels):
    # Cross-replica collectives (all_gather, and Keras's build-time reduce under
    # MultiWorkerMirroredStrategy) accept 32/64-bit types only, not uint8.
    return tf.cast(labels, "float32" if labels.dtype.is_floating else "int32")


def pair_similarity(labels_a, labels_b):
    """NumPy S_ij: 1 where items share a label (class ids or multi-hot), as a
    (n, m) float32 array: `tfhash.losses.label_similarity` on arrays."""
    return np.asarray(label_similarity(np.asarray(labels_a), np.asarray(labels_b)))


def cross_modal_batches(images, texts, labels, batch_size, *, seed=0, shuffle=True):
    """Batches of paired rows for cross-modal models (SSAH): `batches` of
    "images" (raw), "texts" (bag-of-words), "labels" (multi-hot, float32) and
    "index" (the row's position in the training arrays, which models use to
    address their per-item memory).

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
    if labels.ndim == 1:
        labels = np.eye(int(labels.max()) + 1, dtype=np.float32)[labels]
    if labels.ndim != 2:
        raise ValueError(f"labels must be multi-hot (n, classes) or class ids (n,). Received: shape={labels.shape}")
    return batches(("images", "texts", "labels", "index"), images=images, texts=texts,
                   labels=labels.astype(np.float32), batch_size=batch_size, seed=seed, shuffle=shuffle)


def graph_batches(images, texts, graph, batch_size, *, seed=0, shuffle=True):
    """Batches for UGACH: paired rows, each with a related item of the other modality.

    Each element is a dict of "images" (raw), "texts" (bags of words),
    "positive_texts" (the text of a related item, for the image as query),
    "positive_images" (the image of another related item, for the text as
    query), "ids" and "neighbours" (the row's graph list), ids and lists as
    float32 (exact below 2**24, gatherable across replicas). Related items are
    drawn uniformly from the row's graph list, afresh each epoch (seeded). No
    labels travel: UGACH is unsupervised.

    Args:
        images: (n, height, width, channels) raw images.
        texts: (n, vocabulary_size) bags of words of the same n items.
        graph: (n, m) int lists of related items, e.g.
            `tfhash.neighbours.correlation_graph(...)`.
        batch_size: global batch size; seed, shuffle: as `pairwise_batches`.
    """
    images, texts, graph = np.asarray(images), np.asarray(texts), np.asarray(graph)
    n = len(images)
    if texts.ndim != 2 or len(texts) != n:
        raise ValueError(
            f"texts must be bag-of-words vectors (n, vocabulary_size) for the {n} images. Received: shape={texts.shape}"
        )
    if graph.ndim != 2 or len(graph) != n or graph.shape[1] == 0 or graph.min() < 0 or graph.max() >= n:
        raise ValueError(
            f"graph must be (n, m) lists of item ids in [0, {n}) for the {n} items. "
            f"Received: shape={graph.shape}" + (f", ids {graph.min()}..{graph.max()}" if graph.size else "")
        )
    if batch_size < 2 or batch_size > n:
        raise ValueError(f"batch_size must be in [2, {n}] (candidates come from the batch). Received: batch_size={batch_size}")
    all_images, all_texts = tf.constant(images), tf.constant(texts.astype(np.float32))
    width = graph.shape[1]
    ds = tf.data.Dataset.from_tensor_slices(
        {"ids": np.arange(n, dtype=np.float32), "neighbours": graph.astype(np.float32)}
    )
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def add_rows(row, draw):
        i = tf.cast(row["ids"], "int64")
        related = tf.cast(row["neighbours"], "int64")
        draw = tf.math.abs(draw)
        for_image, for_text = related[draw % width], related[(draw // width) % width]
        return {
            "images": all_images[i],
            "texts": all_texts[i],
            "positive_texts": all_texts[for_image],
            "positive_images": all_images[for_text],
            **row,
        }

    ds = tf.data.Dataset.zip(ds, draws).map(add_rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _shard_by_data(ds.batch(batch_size, drop_remainder=True))


def draw_labelled(labels, fraction, seed=0):
    """A seeded boolean mask of the rows whose labels a semi-supervised model keeps.

    Class ids are drawn per class (round(fraction * class size) rows of each
    class, at least one), so a small fraction still covers every class;
    multi-hot rows are drawn uniformly (round(fraction * n), at least one).

    Args:
        labels: (n,) class ids or (n, c) multi-hot labels.
        fraction: share of labelled rows, in (0, 1].
        seed: the draw's seed; the same seed gives the same rows.
    """
    labels = np.asarray(labels)
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"labelled_fraction must be in (0, 1]. Received: {fraction}")
    if labels.ndim not in (1, 2) or len(labels) == 0:
        raise ValueError(f"labels must be class ids (n,) or multi-hot (n, classes), n > 0. Received: shape={labels.shape}")
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if labels.ndim == 1 else [np.arange(len(labels))]
    for rows in groups:
        mask[rng.choice(rows, max(1, round(fraction * len(rows))), replace=False)] = True
    return mask


def semi_supervised_batches(
    images, labels, batch_size, *, labelled_fraction=1.0, labelled=None, labelled_per_batch=None, seed=0
):
    """Batches of `(images, (labels, labelled))` for semi-supervised models (DSH-GAN).

    `labelled` is 1.0 for rows whose labels the model may use and 0.0 for the
    rest, whose labels are replaced by zeros before they enter the pipeline:
    an unlabelled row cannot leak its label into training.

    With every row labelled this is `batches` of ("images", "labels",
    "labelled") as tuples: `pairwise_batches` plus a column of ones. Otherwise each batch holds `labelled_per_batch` labelled rows (cycled, as
    there are few) and `batch_size - labelled_per_batch` unlabelled ones; an
    epoch is one pass over the unlabelled rows.

    Args:
        images: (n, height, width, channels) raw images.
        labels: (n,) class ids or (n, c) multi-hot labels of all n rows.
        batch_size: global batch size.
        labelled_fraction: share of rows that keep their labels
            (`draw_labelled(labels, labelled_fraction, seed)`).
        labelled: an explicit boolean mask instead of a fraction.
        labelled_per_batch: labelled rows in each batch (default: half the batch).
        seed: seeds the labelled draw and the shuffles.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(
            f"images and labels must have the same length. Received: {len(images)} images, {len(labels)} labels"
        )
    if labelled is None:
        labelled = draw_labelled(labels, labelled_fraction, seed)
    labelled = np.asarray(labelled)
    if labelled.shape != (len(images),) or labelled.dtype != bool:
        raise ValueError(
            f"labelled must be a boolean mask of shape ({len(images)},). "
            f"Received: shape={labelled.shape}, dtype={labelled.dtype}"
        )
    if not labelled.any():
        raise ValueError("labelled marks no row: a semi-supervised model needs at least one labelled image")
    if labelled.all():
        ds = batches(("images", "labels", "labelled"), images=images, labels=labels, labelled=labelled,
                     batch_size=batch_size, seed=seed)
        return _tuples(ds, lambda b: (b["images"], (b["labels"], b["labelled"])))

    labelled_per_batch = batch_size // 2 if labelled_per_batch is None else int(labelled_per_batch)
    unlabelled_per_batch = batch_size - labelled_per_batch
    n_unlabelled = int((~labelled).sum())
    if not 1 <= labelled_per_batch < batch_size or unlabelled_per_batch > n_unlabelled:
        raise ValueError(
            f"labelled_per_batch must be in [1, batch_size - 1] and leave at most {n_unlabelled} "
            f"unlabelled rows per batch. Received: batch_size={batch_size}, labelled_per_batch={labelled_per_batch}"
        )

    def stream(rows, flag, stream_seed):
        kept = labels[rows] if flag else np.zeros_like(labels[rows])
        ds = tf.data.Dataset.from_tensor_slices((images[rows], kept))
        return ds.shuffle(len(rows), seed=stream_seed, reshuffle_each_iteration=True).map(
            lambda x, y: (x, _label_type(y), tf.constant(flag, "float32"))
        )

    with_labels = stream(np.flatnonzero(labelled), 1.0, seed).repeat()
    without = stream(np.flatnonzero(~labelled), 0.0, seed + 1)
    ds = tf.data.Dataset.zip(
        with_labels.batch(labelled_per_batch), without.batch(unlabelled_per_batch, drop_remainder=True)
    )

    def join(a, b):
        x, y, flag = (tf.concat([p, q], axis=0) for p, q in zip(a, b))
        return tf.cast(x, "float32"), (y, flag)

    return _shard_by_data(ds.map(join))
