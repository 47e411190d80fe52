"""Scoring a trained model on a protocol, and the plots that go with it."""

import os

import numpy as np

from tfhash import metrics


def encode_protocol(model, data, batch_size=512, verbose=0):
    """Packed codes of the query and database parts of a `RetrievalData`."""
    query_images, _ = data.subset("query")
    database_images, _ = data.subset("database")
    return (
        model.encode(query_images, batch_size=batch_size, verbose=verbose),
        model.encode(database_images, batch_size=batch_size, verbose=verbose),
    )


def evaluate_model(model, data, *, batch_size=512, verbose=0, curve=True, **metric_options):
    """Encodes a protocol's queries and database and scores the ranking.

    Args:
        model: a `tfhash.models.HashModel`.
        data: `tfhash.data.RetrievalData`.
        curve: also compute the precision-recall curve over radius 0..K.
        **metric_options: passed to `tfhash.metrics.evaluate` (ks, map_k,
            radius, normalization, no_relevant, empty); map_k and
            normalization default to the protocol's (the papers' variant).

    Returns:
        `(result, query_codes, database_codes)`; `result` is the metrics dict
        with "pr_curve" added when `curve` is set.
    """
    query_codes, database_codes = encode_protocol(model, data, batch_size, verbose)
    query_labels, database_labels = data.labels[data.split.query], data.labels[data.split.database]
    metric_options = {**data.protocol.metric_options, **metric_options}
    result = metrics.evaluate(query_codes, database_codes, query_labels, database_labels, **metric_options)
    result["protocol"]["name"] = data.protocol.name
    result["protocol"]["description"] = data.protocol.description
    result["bits"] = int(query_codes.shape[1] * 8)
    if curve:
        pr = metrics.precision_recall_curve(query_codes, database_codes, query_labels, database_labels)
        result["pr_curve"] = {key: np.asarray(v).tolist() for key, v in pr.items()}
    return result, query_codes, database_codes


def plot_precision_recall(curves, path, title="Precision-recall within Hamming radius"):
    """Writes a PNG of one or more PR curves.

    Args:
        curves: {label: {"precision": [...], "recall": [...]}} as returned in
            `evaluate_model(...)[0]["pr_curve"]`.
        path: output PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")  # No display on servers and CI.
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for label, curve in curves.items():
        ax.plot(curve["recall"], curve["precision"], marker=".", label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from tfhash.io import write_atomically

    # The format from the name's extension, as savefig(path) would pick it.
    write_atomically(path, lambda partial: fig.savefig(partial, format=os.path.splitext(path)[1][1:] or "png"))
    plt.close(fig)


DIRECTIONS = {"image_to_text": ("image", "text"), "text_to_image": ("text", "image")}


def evaluate_cross_modal(
    image_encoder, text_encoder, query, database, *, batch_size=512, **metric_options
):
    """Cross-modal retrieval scores: image queries against text codes and back.

    Args:
        image_encoder, text_encoder: `HashModel`s of the two modalities
            (e.g. `SSAH.image_encoder`, `SSAH.text_encoder`).
        query, database: `(images, texts, labels)` triples, e.g.
            `data.subset("query")` and `data.subset("database")` of a
            `tfhash.data.CrossModalData`.
        **metric_options: passed to `tfhash.metrics.evaluate` (ks, map_k, ...).

    Returns:
        `{"image_to_text": {...}, "text_to_image": {...}}`, each the dict of
        `tfhash.metrics.evaluate` (mAP@all by default, P@100, P/R within r=2).
    """
    encoders = {"image": image_encoder, "text": text_encoder}

    def codes(triple):
        images, texts, _ = triple
        inputs = {"image": images, "text": texts}
        return {m: encoders[m].encode(inputs[m], batch_size=batch_size) for m in encoders}

    query_codes, database_codes = codes(query), codes(database)
    return {
        direction: metrics.evaluate(
            query_codes[source], database_codes[target], query[2], database[2], **metric_options
        )
        for direction, (source, target) in DIRECTIONS.items()
    }


def validation_rows(split, size=500, seed=0):
    """Rows to select checkpoints on, never touching the query set.

    Validation queries are drawn (seeded) from the database items outside the
    training set; their database is the training set. Selecting on the
    protocol's queries would report a number tuned on the test set.

    Returns:
        `(validation_queries, validation_database)`, index arrays into the dataset.
    """
    held_out = np.setdiff1d(split.database, split.train)
    if len(held_out) == 0:
        raise ValueError("The split has no database items outside the training set to validate on.")
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(held_out, size=min(size, len(held_out)), replace=False))
    return queries, np.asarray(split.train)


def pair_retrieval_map(image_encoder, text_encoder, images, texts, *, batch_size=512):
    """A label-free score for selecting checkpoints of unsupervised cross-modal models.

    Each image's one relevant text is its own (and back): the mean of I->T and
    T->I mAP@all over held-out pairs, which for a single relevant item is the
    mean reciprocal rank of the partner. No labels are read, so UGACH can
    select epochs without the supervision it must not have.

    Args:
        image_encoder, text_encoder: `HashModel`s of the two modalities.
        images, texts: n paired rows, n >= 2, held out from training.
    """
    n = len(images)
    if n < 2 or len(texts) != n:
        raise ValueError(f"images and texts must be n >= 2 paired rows. Received: {len(images)} and {len(texts)} rows")
    image_codes = image_encoder.encode(images, batch_size=batch_size)
    text_codes = text_encoder.encode(texts, batch_size=batch_size)
    identity = np.eye(n, dtype=np.uint8)  # item i's only "label" is i
    return float(
        (metrics.mean_average_precision(image_codes, text_codes, identity, identity)
         + metrics.mean_average_precision(text_codes, image_codes, identity, identity)) / 2
    )
