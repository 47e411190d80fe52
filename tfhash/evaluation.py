"""Scoring a trained model on a protocol, and the plots that go with it."""

import hashlib
import os
import typing

import numpy as np

from tfhash import metrics


def encode_protocol(model, data, batch_size=512, verbose=0, codes_cache=None):
    """Packed codes of the query and database parts of a `RetrievalData`.

    With `codes_cache` (a folder), the database codes are kept there
    (`encode_cached`): a second evaluation encodes the queries only.
    """
    query_images, _ = data.subset("query")
    database_images, _ = data.subset("database")
    query_codes = model.encode(query_images, batch_size=batch_size, verbose=verbose)
    database_codes = encode_cached(model, database_images, codes_cache, f"database_{data.protocol.name}",
                                   batch_size, verbose)
    return query_codes, database_codes


def encode_cached(model, inputs, codes_cache, name, batch_size=512, verbose=0):
    """`model.encode(inputs)`, kept in the folder `codes_cache` (None: not
    kept) as `{name}_{key}.npy`, keyed by the sha256 of the model's weights
    and of the inputs, and reused while neither changes."""
    if codes_cache is None:
        return model.encode(inputs, batch_size=batch_size, verbose=verbose)
    key = hashlib.sha256()
    for weights in model.get_weights():
        key.update(np.ascontiguousarray(weights).tobytes())
    key.update(np.ascontiguousarray(inputs).tobytes())
    path = os.path.join(codes_cache, f"{name}_{key.hexdigest()[:24]}.npy")
    if os.path.isfile(path):
        codes = np.load(path, allow_pickle=False)
        if codes.shape == (len(inputs), model.bits // 8):
            return codes
    codes = model.encode(inputs, batch_size=batch_size, verbose=verbose)
    from tfhash.io import save_arrays

    os.makedirs(codes_cache, exist_ok=True)
    save_arrays(path, codes)
    return codes


def evaluate_model(model, data, *, batch_size=512, verbose=0, curve=True, codes_cache=None, **metric_options):
    """Encodes a protocol's queries and database and scores the ranking.

    Args:
        model: a `tfhash.models.HashModel`.
        data: `tfhash.data.RetrievalData`.
        curve: also compute the precision-recall curve over radius 0..K.
        codes_cache: a folder keeping the database codes for the next
            evaluation of the same model (`encode_protocol`).
        **metric_options: passed to `tfhash.metrics.evaluate` (ks, map_k,
            radius, normalization, no_relevant, empty); map_k and
            normalization default to the protocol's (the papers' variant).

    Returns:
        `(result, query_codes, database_codes)`; `result` is the metrics dict
        with "pr_curve" added when `curve` is set.
    """
    query_codes, database_codes = encode_protocol(model, data, batch_size, verbose, codes_cache)
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


# ---------------------------------------------------------------------------
# Plots. Each builds a matplotlib `Figure` without pyplot, so no global backend
# or figure registry is touched (they run on servers, in threads, and beside a
# notebook's own backend); writes it through `tfhash.io.write_atomically`, so a
# reader finds the old file or the new one, whole; and returns the figure, so
# callers and tests can read what it says. Every title names the protocol, the
# code length and the mAP where there is one (`describe`).

# Styles for lines that may coincide: consecutive lines in the drawing order
# differ in colour, marker, dash, and width and marker size (three levels, the
# largest drawn first), and markers are hollow, so a line drawn over another
# leaves it visible. Callers order lines so that close ones are consecutive.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
DASHES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1)), (0, (3, 1, 1, 1, 1, 1)))
WIDTHS, MARKER_SIZES = (2.8, 1.9, 1.1), (10, 7.5, 5)
RELEVANT_COLOR, IRRELEVANT_COLOR = "#1a9850", "#d73027"  # green, red (ColorBrewer RdYlGn)


def line_style(i):
    """Keyword arguments for `Axes.plot` of the i-th line drawn (see above)."""
    return dict(
        color=f"C{i % 10}", marker=MARKERS[i % len(MARKERS)], linestyle=DASHES[i % len(DASHES)],
        linewidth=WIDTHS[i % 3], markersize=MARKER_SIZES[i % 3], markerfacecolor="none",
        markeredgewidth=1.4, zorder=2 + i,
    )


def describe(protocol=None, bits=None, map=None, map_k="all"):
    """One line naming what a plot shows, e.g. "fashion_mnist protocol, 32 bits, mAP@all 0.8411".

    Args:
        protocol: its name (a dict with "name", as in results, is read too).
        bits: an int, or several (e.g. [32, 64]: "32 and 64 bits").
        map: a float, or {label: float} for several curves ("mAP@all: dhn 0.8411, ...").
        map_k: the mAP cut-off ("all" or an int), as `evaluate` reports it.
    """
    parts = []
    if isinstance(protocol, dict):
        protocol = protocol.get("name")
    if protocol:
        parts.append(protocol if "protocol" in str(protocol).lower() else f"{protocol} protocol")
    if bits is not None:
        values = sorted({int(b) for b in np.atleast_1d(bits)})
        parts.append((" and ".join(_strs(values)) if len(values) > 1 else str(values[0])) + " bits")
    name = f"mAP@{'all' if map_k is None else map_k}"
    if isinstance(map, dict):
        if map:
            parts.append(f"{name}: " + ", ".join(f"{label} {float(v):.4f}" for label, v in map.items()))
    elif map is not None:
        parts.append(f"{name} {float(map):.4f}")
    return ", ".join(parts)


def _strs(values):
    return [str(v) for v in values]


def _figure(width, height, dpi=120):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def save_figure(figure, path):
    """Writes `figure` to `path` through `write_atomically`, in the format of the
    name's extension (PNG without one), cropped to what is drawn (legends
    outside the axes included)."""
    from tfhash.io import write_atomically

    # The format from the name's extension, as savefig(path) would pick it.
    extension = os.path.splitext(os.fspath(path))[1][1:] or "png"
    write_atomically(path, lambda partial: figure.savefig(partial, format=extension, bbox_inches="tight"))


def _curve_parts(value):
    """(curve, map, bits, protocol, map_k) of a curve or of a whole `evaluate_model` result."""
    curve = value.get("pr_curve", value)
    protocol = value.get("protocol")
    if isinstance(protocol, dict):
        protocol = protocol.get("name")
    return curve, value.get("map"), value.get("bits"), protocol, value.get("map_k")


def _common(values):
    values = {v for v in values if v is not None}
    return values.pop() if len(values) == 1 else None


def plot_precision_recall(curves, path, title=None, *, protocol=None, bits=None, map=None, map_k=None):
    """Writes a PNG of one or more precision-recall curves and returns its `Figure`.

    The title names the protocol, the bits and the mAP: from the arguments, or
    else from the curves (when all curves agree on a protocol or bits; the mAP
    of each curve that has one). Curves are told apart by colour, marker and
    dash; the legend, with each curve's mAP, sits below the axes.

    Args:
        curves: {label: curve}; a curve is {"precision": [...], "recall": [...]}
            (`evaluate_model(...)[0]["pr_curve"]`), optionally with "map",
            "bits", "protocol", "map_k"; or the whole `evaluate_model(...)[0]`.
        path: output PNG path (written atomically).
        title: the first title line; default "Precision-recall within Hamming radius 0..K".
        protocol, bits, map, map_k: what the second title line names (see
            `describe`); default: read from the curves.

    Example:
        >>> result, _, _ = evaluate_model(model, data)
        >>> plot_precision_recall({model.name: result}, "pr.png")  # title: protocol, bits, mAP@all
    """
    parts = {label: _curve_parts(value) for label, value in curves.items()}
    bits = bits if bits is not None else _common(p[2] for p in parts.values())
    protocol = protocol or _common(p[3] for p in parts.values())
    map_k = map_k if map_k is not None else (_common(p[4] for p in parts.values()) or "all")
    maps = {label: p[1] for label, p in parts.items() if p[1] is not None}
    if map is None and maps:
        map = next(iter(maps.values())) if len(parts) == 1 else maps
    radius = f"0..{int(np.max(bits))}" if bits is not None and np.ndim(bits) == 0 else "0..K"
    heading = title or f"Precision-recall within Hamming radius {radius}"
    line = describe(protocol, bits, map, map_k)

    figure = _figure(5.2, 4.6)
    ax = figure.subplots()
    for i, (label, (curve, curve_map, *_)) in enumerate(parts.items()):
        if curve_map is not None and "mAP" not in label:
            label = f"{label}, mAP {float(curve_map):.4f}"
        ax.plot(curve["recall"], curve["precision"], label=label, **line_style(i))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(heading + (f"\n{line}" if line and line not in heading else ""), fontsize=10)
    ax.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=min(len(parts), 2), fontsize=8, frameon=False)
    save_figure(figure, path)
    return figure


def _display(image):
    """An image for `imshow` on a 0-255 scale: (array, keyword arguments)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return image, dict(cmap="gray", vmin=0, vmax=255)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return np.clip(image, 0, 255).astype(np.uint8), {}
    raise ValueError(f"Expected a grayscale (H, W) or (H, W, 1), or an RGB (H, W, 3) image. Received: {image.shape}")


def label_text(label, names=None, most=3):
    """A label as words: a class id (names[id] if names are given) or a
    multi-hot row (its labels, at most `most` of them, then "...")."""
    label = np.asarray(label)
    ids = [int(label)] if label.ndim == 0 else [int(j) for j in np.flatnonzero(label)]
    words = [str(names[j]) if names is not None and j < len(names) else str(j) for j in ids]
    return ", ".join(words[:most]) + (", ..." if len(words) > most else "") if words else "(none)"


def plot_neighbours(query_images, neighbour_images, relevant, path, title=None, *, query_labels=None,
                    neighbour_labels=None, distances=None):
    """Writes a retrieval picture: each query (a row) beside its nearest database
    images in rank order, relevant ones in a solid green frame with a check
    mark, the others in a dashed red frame with a cross; a caption says so.
    Returns the `Figure` (neighbour axes are labelled "neighbour i,j").

    Args:
        query_images: (q, H, W), (q, H, W, 1) or (q, H, W, 3), on a 0-255 scale.
        neighbour_images: (q, k, ...) the same kind of images, rank order.
        relevant: (q, k) bools, whether neighbour j is relevant to query i;
            None when unknown (unlabelled images): plain grey frames, no marks.
        path: output PNG path (written atomically).
        title: the title (name the protocol, bits and mAP: `describe`).
        query_labels, neighbour_labels: (q,) and (q, k) texts written under
            the images (e.g. `label_text` of the labels), optional.
        distances: (q, k) Hamming distances written under the neighbours, optional.
    """
    known = relevant is not None
    relevant = np.asarray(relevant, dtype=bool) if known else np.zeros(np.shape(neighbour_images)[:2], bool)
    q = len(query_images)
    if relevant.ndim != 2 or relevant.shape[0] != q or np.shape(neighbour_images)[:2] != relevant.shape:
        raise ValueError(
            "Expected q query images, (q, k) neighbour images and (q, k) relevance. Received: "
            f"{q} queries, neighbours {np.shape(neighbour_images)[:2]}, relevant {relevant.shape}"
        )
    k = relevant.shape[1]
    from matplotlib.patches import Patch

    figure = _figure(1.0 * (k + 1.3), 1.25 * q + 1.3, dpi=100)
    grid = figure.add_gridspec(q, k + 2, width_ratios=[1, 0.3] + [1] * k)
    for i in range(q):
        ax = figure.add_subplot(grid[i, 0], label=f"query {i}")
        image, options = _display(query_images[i])
        ax.imshow(image, interpolation="nearest", **options)
        ax.set_xticks([])
        ax.set_yticks([])
        if query_labels is not None:
            ax.set_xlabel(str(query_labels[i]), fontsize=7)
        if i == 0:
            ax.set_title("query", fontsize=8)
        for spine in ax.spines.values():
            spine.set(color="#2c7bb6", linewidth=2.5)
        for j in range(k):
            ax = figure.add_subplot(grid[i, j + 2], label=f"neighbour {i},{j}")
            image, options = _display(neighbour_images[i][j])
            ax.imshow(image, interpolation="nearest", **options)
            ax.set_xticks([])
            ax.set_yticks([])
            words = ["\u2713" if relevant[i, j] else "\u2717"] if known else [""]
            if neighbour_labels is not None:
                words.append(str(neighbour_labels[i][j]))
            if distances is not None:
                words.append(f"d={int(distances[i][j])}")
            ax.set_xlabel(words[0] + " " + " | ".join(words[1:]), fontsize=6)
            if i == 0:
                ax.set_title(f"{j + 1}", fontsize=8)
            for spine in ax.spines.values():
                if not known:
                    spine.set(color="#888888", linewidth=1.5)
                    continue
                spine.set(color=RELEVANT_COLOR if relevant[i, j] else IRRELEVANT_COLOR, linewidth=3,
                          linestyle="-" if relevant[i, j] else "--")
    figure.suptitle(title or f"{q} queries and their {k} nearest database images", fontsize=10)
    if not known:
        figure.text(0.5, 0.01, "columns: rank 1..k by Hamming distance d, ties by database order", ha="center",
                    fontsize=8)
        save_figure(figure, path)
        return figure
    figure.legend(
        handles=[
            Patch(facecolor="none", edgecolor=RELEVANT_COLOR, linewidth=3,
                  label="\u2713 green frame: relevant (shares a label with the query)"),
            Patch(facecolor="none", edgecolor=IRRELEVANT_COLOR, linewidth=3, linestyle="--",
                  label="\u2717 dashed red frame: not relevant"),
        ],
        loc="outside lower center", ncols=2, fontsize=8, frameon=False,
        title="columns: rank 1..k by Hamming distance d, ties by database order", title_fontsize=8,
    )
    save_figure(figure, path)
    return figure


class NeighbourPicture(typing.NamedTuple):
    """What `neighbour_picture` drew: positions into the query and database arrays."""

    figure: object
    queries: np.ndarray  # (q,) query positions
    neighbours: np.ndarray  # (q, k) database positions, rank order
    distances: np.ndarray  # (q, k) Hamming distances
    relevant: np.ndarray  # (q, k) bools


def neighbour_picture(query_codes, database_codes, query_images, database_images, query_labels, database_labels,
                      path, *, n_queries=5, k=10, queries=None, label_names=None, title=None, protocol=None,
                      bits=None, map=None, map_k="all"):
    """Ranks the database for a few queries by Hamming distance and writes
    `plot_neighbours` of them.

    The queries are the first `n_queries` (or the positions in `queries`),
    never chosen by how good their neighbours look. Ranking is exact
    (`tfhash.index.HammingIndex`: distance ascending, ties by database
    position); a neighbour is relevant when it shares a label with its query
    (`tfhash.metrics.relevance`: same class id, or a common label of multi-hot rows).

    Args:
        query_codes, database_codes: packed uint8 codes, (nq, K/8) and (nd, K/8).
        query_images, database_images: (n, H, W[, C]) images on a 0-255 scale.
        query_labels, database_labels: class ids (n,) or multi-hot (n, C).
        path: output PNG path (written atomically).
        n_queries, k: how many queries, and neighbours per query.
        queries: query positions to show instead of the first `n_queries`.
        label_names: names of the class ids / label columns, for the captions.
        title: the first title line; the second names protocol, bits (default:
            the codes') and mAP (see `describe`).

    Returns:
        A `NeighbourPicture`: figure, queries, neighbours, distances, relevant.
    """
    from tfhash.index import HammingIndex

    query_codes, database_codes = np.asarray(query_codes), np.asarray(database_codes)
    query_labels, database_labels = np.asarray(query_labels), np.asarray(database_labels)
    chosen = np.arange(min(int(n_queries), len(query_codes))) if queries is None else np.asarray(queries, np.int64)
    if chosen.ndim != 1 or len(chosen) == 0:
        raise ValueError(f"Expected at least one query. Received: n_queries={n_queries}, queries={queries}")
    index = HammingIndex(query_codes.shape[1] * 8)
    index.add(database_codes)
    distances, neighbours = index.search(query_codes[chosen], int(k))
    relevant = np.stack([
        metrics.relevance(query_labels[[q]], database_labels[neighbours[i]])[0] for i, q in enumerate(chosen)
    ])
    shown = f"First {len(chosen)} queries" if queries is None else "Queries " + ", ".join(_strs(chosen))
    heading = title or f"{shown} and their {neighbours.shape[1]} nearest database images by Hamming distance"
    line = describe(protocol, query_codes.shape[1] * 8 if bits is None else bits, map, map_k)
    figure = plot_neighbours(
        np.asarray(query_images)[chosen], np.asarray(database_images)[neighbours], relevant, path,
        title=f"{heading}\n{line}",
        query_labels=[f"#{q}: {label_text(query_labels[q], label_names)}" for q in chosen],
        neighbour_labels=[[label_text(database_labels[n], label_names) for n in row] for row in neighbours],
        distances=distances,
    )
    return NeighbourPicture(figure, chosen, neighbours, distances, relevant)


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
