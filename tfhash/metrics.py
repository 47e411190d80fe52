"""Retrieval metrics for binary hash codes, in pure NumPy.

Published hashing numbers are only comparable when the protocol is, so every
option that changes a number is named and explicit:

* **Codes** are packed ``uint8`` arrays of shape ``(n, K / 8)``, bit order as
  ``np.packbits`` (most significant bit first). Nothing is converted silently:
  any other dtype or shape raises ``ValueError``.
* **Distance** is the Hamming distance ``popcount(a XOR b)``. Functions that rank
  also accept a precomputed ``distances=`` array (any real score, smaller is
  closer) instead of codes, to score real-valued retrieval the same way.
* **Ranking** is by distance ascending, ties broken by database index ascending,
  so every result is deterministic.
* **Relevance**: a database item is relevant to a query when they share at least
  one label. Labels are 1-D integer class ids (single-label) or 2-D ``{0, 1}``
  multi-hot arrays (multi-label).

Two layers: :func:`rank` and :func:`average_precision` work on arrays you
already have (distances, a ranked relevance matrix); the other functions take
codes and labels, and process queries in chunks so that no intermediate array
holds much more than ``2**24`` entries, whatever the database size.
"""

import numpy as np

NORMALIZATIONS = ("retrieved", "min_k_relevant")
NO_RELEVANT_POLICIES = ("zero", "drop")
EMPTY_POLICIES = ("zero", "drop")

# Entries (queries x database items) materialized per chunk. 2**24 keeps the
# peak near 300 MB (the int64 argsort output dominates) at full NumPy speed.
_CHUNK_ENTRIES = 2**24


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _check_codes(name, codes, width=None):
    """Returns `codes` as an ndarray after checking it is packed uint8 codes."""
    codes = np.asarray(codes)
    expected = "(n, K/8)" if width is None else f"(n, {width})"
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] == 0:
        raise ValueError(
            f"{name} must be packed uint8 codes of shape {expected} "
            "(see np.packbits); "
            f"received dtype={codes.dtype}, shape={codes.shape}"
        )
    if width is not None and codes.shape[1] != width:
        raise ValueError(
            f"{name} must be packed uint8 codes of shape {expected}, as wide "
            f"as query_codes; received dtype={codes.dtype}, shape={codes.shape}"
        )
    if codes.shape[0] == 0:
        raise ValueError(
            f"{name} must hold at least one code; received shape={codes.shape}"
        )
    return codes


def _check_labels(query_labels, database_labels, num_queries=None, num_database=None):
    """Checks both label arrays (and their lengths, when given); returns ndarrays."""
    checked = []
    for name, labels, n in (
        ("query_labels", query_labels, num_queries),
        ("database_labels", database_labels, num_database),
    ):
        labels = np.asarray(labels)
        if labels.ndim == 1:
            if not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(
                    f"{name} as 1-D class ids must have an integer dtype; "
                    f"received dtype={labels.dtype}, shape={labels.shape}"
                )
        elif labels.ndim == 2:
            if not (
                labels.dtype == np.bool_
                or np.issubdtype(labels.dtype, np.integer)
                or np.issubdtype(labels.dtype, np.floating)
            ) or not np.all((labels == 0) | (labels == 1)):
                raise ValueError(
                    f"{name} as a 2-D multi-hot array must hold only 0 and 1; "
                    f"received dtype={labels.dtype}, shape={labels.shape}"
                )
        else:
            raise ValueError(
                f"{name} must be 1-D integer class ids of shape (n,) or a 2-D "
                f"multi-hot array of shape (n, num_classes); received "
                f"dtype={labels.dtype}, shape={labels.shape}"
            )
        if n is not None and labels.shape[0] != n:
            raise ValueError(
                f"{name} must have one row per item: expected {n} rows, "
                f"received shape={labels.shape}"
            )
        checked.append(labels)
    query_labels, database_labels = checked
    if query_labels.ndim != database_labels.ndim or (
        query_labels.ndim == 2 and query_labels.shape[1] != database_labels.shape[1]
    ):
        raise ValueError(
            "query_labels and database_labels must be the same kind: both 1-D "
            "class ids, or both multi-hot with the same number of classes; "
            f"received shapes {query_labels.shape} and {database_labels.shape}"
        )
    return query_labels, database_labels


def _check_distances(distances):
    distances = np.asarray(distances)
    if (
        distances.ndim != 2
        or distances.dtype == np.bool_
        or not (
            np.issubdtype(distances.dtype, np.integer)
            or np.issubdtype(distances.dtype, np.floating)
        )
    ):
        raise ValueError(
            "distances must be a real-valued array of shape (num_queries, "
            f"num_database); received dtype={distances.dtype}, "
            f"shape={distances.shape}"
        )
    if distances.shape[0] == 0 or distances.shape[1] == 0:
        raise ValueError(
            "distances must cover at least one query and one database item; "
            f"received shape={distances.shape}"
        )
    if np.issubdtype(distances.dtype, np.floating) and np.isnan(distances).any():
        raise ValueError("distances must not contain NaN: NaN has no rank")
    return distances


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}; received {name}={value!r}")


def _check_k(name, k, num_database, allow_none=False):
    if k is None and allow_none:
        return None
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        expected = "None or an integer" if allow_none else "an integer"
        raise ValueError(
            f"{name} must be {expected} in [1, {num_database}] (the database "
            f"size); received {name}={k!r}"
        )
    if not 1 <= k <= num_database:
        raise ValueError(
            f"{name} must be in [1, {num_database}] (the database size); "
            f"received {name}={k}"
        )
    return int(k)


def _check_radius(radius):
    if (
        isinstance(radius, (bool, np.bool_))
        or not isinstance(radius, (int, np.integer))
        or radius < 0
    ):
        raise ValueError(
            f"radius must be a non-negative integer; received radius={radius!r}"
        )
    return int(radius)


# --------------------------------------------------------------------------
# Distances, relevance, ranking
# --------------------------------------------------------------------------


def _unpack_signs(codes):
    """Packed codes -> float32 array of +-1, one column per bit."""
    bits = np.unpackbits(codes, axis=1).astype(np.float32)
    bits *= 2.0
    bits -= 1.0
    return bits


def _distance_dtype(bits, internal=False):
    # Internally uint8 when it fits: the stable radix sort in `rank` then
    # needs one pass per row instead of two.
    if internal and bits <= 255:
        return np.uint8
    return np.int16 if bits < 2**15 else np.int32


def _hamming_block(query_signs, database_signs_t, bits, dtype):
    # <b_q, b_d> = K - 2 d for +-1 vectors; float32 products and sums of
    # integers are exact below 2**24, far above any code length.
    dots = query_signs @ database_signs_t
    dots *= -0.5
    dots += bits / 2
    return dots.astype(dtype)


def hamming_distances(query_codes, database_codes):
    """Hamming distances between every query and every database code.

    Args:
      query_codes: packed uint8 codes, shape `(num_queries, K/8)`.
      database_codes: packed uint8 codes, shape `(num_database, K/8)`.

    Returns:
      An array of shape `(num_queries, num_database)`, dtype int16 (int32 when
      K >= 32768): the number of differing bits.

    Examples:
      >>> hamming_distances(np.array([[0b10110000]], np.uint8),
      ...                   np.array([[0], [0b10110001]], np.uint8))
      array([[3, 1]], dtype=int16)
    """
    query_codes = _check_codes("query_codes", query_codes)
    database_codes = _check_codes("database_codes", database_codes, query_codes.shape[1])
    bits = 8 * query_codes.shape[1]
    return _hamming_block(
        _unpack_signs(query_codes),
        _unpack_signs(database_codes).T,
        bits,
        _distance_dtype(bits),
    )


def _relevance_block(query_labels, database_labels_t):
    if query_labels.ndim == 1:
        return query_labels[:, None] == database_labels_t[None, :]
    # Multi-hot: the number of shared labels, exact in float32.
    return (query_labels @ database_labels_t) > 0


def _labels_for_matmul(labels):
    return labels if labels.ndim == 1 else labels.astype(np.float32)


def relevance(query_labels, database_labels):
    """Which database items are relevant to which query.

    An item is relevant to a query when they share at least one label.

    Args:
      query_labels: 1-D integer class ids of shape `(num_queries,)`, or a 2-D
        `{0, 1}` multi-hot array of shape `(num_queries, num_classes)`.
      database_labels: the same kind of labels, `(num_database,)` or
        `(num_database, num_classes)`.

    Returns:
      A bool array of shape `(num_queries, num_database)`.
    """
    query_labels, database_labels = _check_labels(query_labels, database_labels)
    return _relevance_block(
        _labels_for_matmul(query_labels), _labels_for_matmul(database_labels).T
    )


def rank(distances):
    """Orders database items per query: distance ascending, ties by index.

    Args:
      distances: array of shape `(num_queries, num_database)`, smaller is
        closer (Hamming distances, or any real-valued score).

    Returns:
      int64 array of the same shape: row `q` lists database indices from the
      nearest to the farthest. Equal distances keep database index order.
    """
    distances = np.asarray(distances)
    # A stable sort keeps ties in index order. NumPy's stable sort is a radix
    # sort for integers of 16 bits or fewer, linear in the database size, and
    # uint8 needs half the passes of int16.
    if (
        np.issubdtype(distances.dtype, np.integer)
        and distances.dtype.itemsize <= 2
        and distances.size
        and distances.min() >= 0
        and distances.max() <= 255
    ):
        distances = distances.astype(np.uint8)
    return np.argsort(distances, axis=1, kind="stable")


# --------------------------------------------------------------------------
# Low level: metrics of a ranked relevance matrix
# --------------------------------------------------------------------------


def average_precision(ranked_relevance, *, k=None, normalization="retrieved"):
    """Per-query AP@K from relevance already in ranked order.

    See :func:`mean_average_precision` for the definition.

    Args:
      ranked_relevance: bool array of shape `(num_queries, num_database)`,
        entry `[q, i]` is True when the i-th ranked item is relevant to `q`.
        It must cover the whole database: "min_k_relevant" counts all relevant
        items.
      k: cut-off, an integer in `[1, num_database]`; None for all (mAP@all).
      normalization: "retrieved" or "min_k_relevant".

    Returns:
      float64 array of shape `(num_queries,)`: AP@K per query, NaN where the
      denominator is 0 (nothing relevant to count).
    """
    ranked_relevance = np.asarray(ranked_relevance, dtype=bool)
    if ranked_relevance.ndim != 2:
        raise ValueError(
            "ranked_relevance must be a 2-D bool array of shape (num_queries, "
            f"num_database); received shape={ranked_relevance.shape}"
        )
    _check_choice("normalization", normalization, NORMALIZATIONS)
    num_database = ranked_relevance.shape[1]
    k = _check_k("k", k, num_database, allow_none=True)
    return _average_precision(ranked_relevance, k or num_database, normalization)


def _average_precision(ranked, k, normalization):
    top = ranked[:, :k]
    rows, cols = np.nonzero(top)  # row-major: row by row, ranks ascending
    hits = np.bincount(rows, minlength=top.shape[0])
    # The j-th relevant item of a row sits at rank cols + 1 and has j relevant
    # items at or above it, so its precision is j / (cols + 1). Summing only
    # over relevant items keeps memory proportional to the hits.
    starts = np.cumsum(hits) - hits
    ordinal = np.arange(1, rows.size + 1) - np.repeat(starts, hits)
    sums = np.bincount(rows, weights=ordinal / (cols + 1.0), minlength=top.shape[0])
    if normalization == "retrieved":
        denominator = hits
    else:
        denominator = np.minimum(k, ranked.sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, sums / denominator, np.nan)


def _mean_ap(ap, no_relevant):
    if no_relevant == "zero":
        return float(np.nan_to_num(ap, nan=0.0).mean())
    kept = ap[~np.isnan(ap)]
    if kept.size == 0:
        raise ValueError(
            'no_relevant="drop" left no query to average: no query has a '
            "relevant item to count (check the labels, or use "
            'no_relevant="zero")'
        )
    return float(kept.mean())


# --------------------------------------------------------------------------
# Chunked pass over queries
# --------------------------------------------------------------------------


def _blocks(query_codes, database_codes, query_labels, database_labels, distances=None):
    """Validates inputs; returns (bits or None, num_queries, num_database, blocks).

    `blocks` yields `(distances, relevance)` for consecutive query chunks, so a
    metric never holds more than about `_CHUNK_ENTRIES` entries at once.
    """
    if distances is not None:
        if query_codes is not None or database_codes is not None:
            raise ValueError(
                "Pass either codes or distances=, not both; received codes "
                "and distances (set query_codes and database_codes to None)"
            )
        distances = _check_distances(distances)
        num_queries, num_database = distances.shape
        bits = None
    else:
        query_codes = _check_codes("query_codes", query_codes)
        database_codes = _check_codes(
            "database_codes", database_codes, query_codes.shape[1]
        )
        num_queries, num_database = query_codes.shape[0], database_codes.shape[0]
        bits = 8 * query_codes.shape[1]
    query_labels, database_labels = _check_labels(
        query_labels, database_labels, num_queries, num_database
    )

    def blocks():
        query_l = _labels_for_matmul(query_labels)
        database_l_t = _labels_for_matmul(database_labels).T
        if distances is None:
            query_signs = _unpack_signs(query_codes)
            database_signs_t = _unpack_signs(database_codes).T
            dtype = _distance_dtype(bits, internal=True)
        step = max(1, _CHUNK_ENTRIES // num_database)
        for start in range(0, num_queries, step):
            chunk = slice(start, start + step)
            if distances is None:
                dist = _hamming_block(query_signs[chunk], database_signs_t, bits, dtype)
            else:
                dist = distances[chunk]
            yield dist, _relevance_block(query_l[chunk], database_l_t)

    return bits, num_queries, num_database, blocks()


def _radius_counts(dist, rel, radius):
    """Per query: (retrieved within radius, relevant among them, relevant)."""
    retrieved = dist <= radius
    return (
        retrieved.sum(axis=1),
        (retrieved & rel).sum(axis=1),
        rel.sum(axis=1),
    )


def _precision_recall(retrieved, hits, num_relevant, empty):
    """Mean precision and recall from per-query counts (last axis: queries)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(retrieved > 0, hits / retrieved, np.nan)
        recall = np.where(num_relevant > 0, hits / num_relevant, 0.0)
    if empty == "zero":
        mean_precision = np.nan_to_num(precision, nan=0.0).mean(axis=-1)
    else:
        counted = (retrieved > 0).sum(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_precision = np.where(
                counted > 0,
                np.nan_to_num(precision, nan=0.0).sum(axis=-1) / counted,
                np.nan,
            )
    return mean_precision, recall.mean(axis=-1)


# --------------------------------------------------------------------------
# High level: codes and labels in, numbers out
# --------------------------------------------------------------------------


def mean_average_precision(
    query_codes,
    database_codes,
    query_labels,
    database_labels,
    *,
    k=None,
    normalization="retrieved",
    no_relevant="zero",
    distances=None,
):
    """Mean average precision at K (mAP@K) of Hamming ranking.

    For one query, rank the database (distance ascending, ties by database
    index) and let `rel_i` be 1 when the i-th ranked item shares a label with
    the query, `P@i` the fraction of relevant items among the first i. Then

        AP@K = sum_{i <= K} rel_i * P@i / D

    where the denominator `D` depends on `normalization`:

    * "retrieved": D = relevant items in the top K (thulab DeepHash,
      DeepHash-pytorch);
    * "min_k_relevant": D = min(K, relevant items in the whole database)
      (torchcmh).

    With K = None (the whole database, mAP@all) both equal the number of
    relevant items, as DCMH and SSAH report. mAP is the mean of AP@K over
    queries; a query whose D is 0 counts as 0 with `no_relevant="zero"`, and
    is left out of the mean with `no_relevant="drop"` (as thulab does).

    Example: one query, five database items whose ranked relevance is
    `[0, 1, 0, 1, 1]` (3 relevant items in all).

    * mAP@all: relevant at ranks 2, 4, 5 with P@2 = 1/2, P@4 = 2/4,
      P@5 = 3/5, so AP = (0.5 + 0.5 + 0.6) / 3 = 0.5333.
    * mAP@3, "retrieved": one relevant item in the top 3, at rank 2:
      AP = (1/2) / 1 = 0.5.
    * mAP@3, "min_k_relevant": the same sum over min(3, 3) = 3:
      AP = (1/2) / 3 = 0.1667.

    Args:
      query_codes: packed uint8 codes, shape `(num_queries, K/8)`; None when
        `distances` is given.
      database_codes: packed uint8 codes, shape `(num_database, K/8)`; None
        when `distances` is given.
      query_labels: 1-D integer class ids or 2-D `{0, 1}` multi-hot labels,
        one row per query.
      database_labels: the same kind of labels, one row per database item.
      k: cut-off K, an integer in `[1, num_database]`, or None for all.
      normalization: "retrieved" or "min_k_relevant", see above.
      no_relevant: "zero" or "drop", see above.
      distances: optional precomputed `(num_queries, num_database)` array,
        smaller is closer, used instead of codes to rank (e.g. real-valued
        retrieval).

    Returns:
      mAP@K as a Python float.

    Raises:
      ValueError: on invalid inputs or options, or when `no_relevant="drop"`
        leaves no query to average.
    """
    _check_choice("normalization", normalization, NORMALIZATIONS)
    _check_choice("no_relevant", no_relevant, NO_RELEVANT_POLICIES)
    _, _, num_database, blocks = _blocks(
        query_codes, database_codes, query_labels, database_labels, distances
    )
    k = _check_k("k", k, num_database, allow_none=True) or num_database
    ap = [
        _average_precision(np.take_along_axis(rel, rank(dist), axis=1), k, normalization)
        for dist, rel in blocks
    ]
    return _mean_ap(np.concatenate(ap), no_relevant)


def precision_at_k(
    query_codes, database_codes, query_labels, database_labels, *, k, distances=None
):
    """Precision of the K nearest items, averaged over queries.

    Per query: (relevant items among the top K of the ranking) / K, ranking by
    distance ascending with ties broken by database index.

    Args:
      query_codes: packed uint8 codes, shape `(num_queries, K/8)`; None when
        `distances` is given.
      database_codes: packed uint8 codes, shape `(num_database, K/8)`; None
        when `distances` is given.
      query_labels: 1-D class ids or 2-D multi-hot labels, one row per query.
      database_labels: the same kind of labels, one row per database item.
      k: the cut-off, an integer in `[1, num_database]`.
      distances: optional precomputed `(num_queries, num_database)` array,
        smaller is closer, used instead of codes.

    Returns:
      Mean precision@K as a Python float.
    """
    _, num_queries, num_database, blocks = _blocks(
        query_codes, database_codes, query_labels, database_labels, distances
    )
    k = _check_k("k", k, num_database)
    total = 0
    for dist, rel in blocks:
        total += np.take_along_axis(rel, rank(dist)[:, :k], axis=1).sum()
    return float(total / (k * num_queries))


def precision_recall_at_radius(
    query_codes, database_codes, query_labels, database_labels, *, radius=2, empty="zero"
):
    """Precision and recall of Hamming-ball retrieval.

    Per query, the retrieved set is every database item within Hamming
    distance `radius` (d <= radius). Precision = relevant retrieved /
    retrieved; recall = relevant retrieved / relevant in the database. Both are
    averaged over queries. A query with nothing retrieved has precision 0 with
    `empty="zero"` (DeepHash-pytorch) or is left out of the precision mean with
    `empty="drop"`; if every query is left out, precision is NaN. A query with
    no relevant item in the database has recall 0.

    Args:
      query_codes: packed uint8 codes, shape `(num_queries, K/8)`.
      database_codes: packed uint8 codes, shape `(num_database, K/8)`.
      query_labels: 1-D class ids or 2-D multi-hot labels, one row per query.
      database_labels: the same kind of labels, one row per database item.
      radius: Hamming radius, a non-negative integer (2 is usual).
      empty: "zero" or "drop", see above.

    Returns:
      `(precision, recall)`, Python floats.
    """
    radius = _check_radius(radius)
    _check_choice("empty", empty, EMPTY_POLICIES)
    _, _, _, blocks = _blocks(query_codes, database_codes, query_labels, database_labels)
    counts = [_radius_counts(dist, rel, radius) for dist, rel in blocks]
    precision, recall = _precision_recall(
        *(np.concatenate(c) for c in zip(*counts)), empty
    )
    return float(precision), float(recall)


def precision_recall_curve(
    query_codes, database_codes, query_labels, database_labels, *, empty="zero"
):
    """Precision and recall of Hamming-ball retrieval at every radius 0..K.

    Each point is :func:`precision_recall_at_radius` at that radius, with the
    same `empty` policy; computed in one pass from per-query histograms of
    distances.

    Args:
      query_codes: packed uint8 codes, shape `(num_queries, K/8)`.
      database_codes: packed uint8 codes, shape `(num_database, K/8)`.
      query_labels: 1-D class ids or 2-D multi-hot labels, one row per query.
      database_labels: the same kind of labels, one row per database item.
      empty: "zero" or "drop", how a query with nothing retrieved counts
        towards precision.

    Returns:
      A dict of float64 arrays of length K + 1: "radius" (0..K, int64),
      "precision" and "recall".
    """
    _check_choice("empty", empty, EMPTY_POLICIES)
    bits, num_queries, _, blocks = _blocks(
        query_codes, database_codes, query_labels, database_labels
    )
    retrieved = np.zeros((bits + 1, num_queries), np.int64)
    hits = np.zeros((bits + 1, num_queries), np.int64)
    num_relevant = np.zeros(num_queries, np.int64)
    start = 0
    for dist, rel in blocks:
        for row in range(dist.shape[0]):
            q = start + row
            # Items at each exact distance, then cumulated: items within r.
            retrieved[:, q] = np.bincount(dist[row], minlength=bits + 1)
            hits[:, q] = np.bincount(dist[row][rel[row]], minlength=bits + 1)
            num_relevant[q] = rel[row].sum()
        start += dist.shape[0]
    np.cumsum(retrieved, axis=0, out=retrieved)
    np.cumsum(hits, axis=0, out=hits)
    precision, recall = _precision_recall(retrieved, hits, num_relevant[None, :], empty)
    return {
        "radius": np.arange(bits + 1),
        "precision": precision,
        "recall": recall,
    }


def evaluate(
    query_codes,
    database_codes,
    query_labels,
    database_labels,
    *,
    ks=(100,),
    map_k=None,
    radius=2,
    normalization="retrieved",
    no_relevant="zero",
    empty="zero",
):
    """All the usual retrieval numbers in one pass, with the protocol used.

    Distances, relevance and ranking are computed once per query chunk and
    shared by every metric. Each number equals the one from its own function
    (:func:`mean_average_precision`, :func:`precision_at_k`,
    :func:`precision_recall_at_radius`) with the same options.

    Args:
      query_codes: packed uint8 codes, shape `(num_queries, K/8)`.
      database_codes: packed uint8 codes, shape `(num_database, K/8)`.
      query_labels: 1-D class ids or 2-D multi-hot labels, one row per query.
      database_labels: the same kind of labels, one row per database item.
      ks: cut-offs for precision@K, each in `[1, num_database]`.
      map_k: cut-off of mAP, or None for mAP@all.
      radius: Hamming radius for precision and recall within the ball.
      normalization: AP denominator, "retrieved" or "min_k_relevant".
      no_relevant: "zero" or "drop", for queries whose AP denominator is 0.
      empty: "zero" or "drop", for queries with nothing within `radius`.

    Returns:
      A dict, for example with the defaults:
      `{"map": 0.71, "map_k": "all", "precision@100": 0.75,
      "precision@r2": 0.62, "recall@r2": 0.08, "protocol": {...}}`, where
      "protocol" records every option, the sizes and the number of queries
      whose AP denominator was 0.
    """
    _check_choice("normalization", normalization, NORMALIZATIONS)
    _check_choice("no_relevant", no_relevant, NO_RELEVANT_POLICIES)
    _check_choice("empty", empty, EMPTY_POLICIES)
    radius = _check_radius(radius)
    bits, num_queries, num_database, blocks = _blocks(
        query_codes, database_codes, query_labels, database_labels
    )
    map_cutoff = _check_k("map_k", map_k, num_database, allow_none=True)
    if isinstance(ks, (str, bytes)) or not np.iterable(ks):
        raise ValueError(
            f"ks must be a sequence of integer cut-offs, e.g. (100,); received ks={ks!r}"
        )
    ks = [_check_k("ks", k, num_database) for k in ks]

    ap, counts = [], []
    precision_hits = np.zeros(len(ks), np.int64)
    for dist, rel in blocks:
        ranked = np.take_along_axis(rel, rank(dist), axis=1)
        ap.append(_average_precision(ranked, map_cutoff or num_database, normalization))
        for i, k in enumerate(ks):
            precision_hits[i] += ranked[:, :k].sum()
        counts.append(_radius_counts(dist, rel, radius))
    ap = np.concatenate(ap)
    precision, recall = _precision_recall(
        *(np.concatenate(c) for c in zip(*counts)), empty
    )

    result = {
        "map": _mean_ap(ap, no_relevant),
        "map_k": "all" if map_cutoff is None else map_cutoff,
    }
    for k, hits in zip(ks, precision_hits):
        result[f"precision@{k}"] = float(hits / (k * num_queries))
    result[f"precision@r{radius}"] = float(precision)
    result[f"recall@r{radius}"] = float(recall)
    result["protocol"] = {
        "ranking": "hamming distance ascending, ties by database index",
        "relevance": "shares at least one label",
        "map_k": result["map_k"],
        "normalization": normalization,
        "no_relevant": no_relevant,
        "ks": list(ks),
        "radius": radius,
        "empty": empty,
        "bits": bits,
        "num_queries": num_queries,
        "num_database": num_database,
        "queries_without_relevant": int(np.isnan(ap).sum()),
    }
    return result
