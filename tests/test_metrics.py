"""Tests for tfhash.metrics: hand-derived golden values, agreement with a slow
pure-Python reference, and input validation."""

import math

import numpy as np
import pytest

from tfhash import metrics

# --------------------------------------------------------------------------
# A tiny hand-checked setup shared by the golden tests.
#
# K = 8 bits, one query code 0b00000000; five database codes at Hamming
# distances 3, 1, 2, 1, 4 (the number of set bits). Items 1 and 3 tie at
# distance 1, so the ranking, ties by database index, is 1, 3, 2, 0, 4.
# --------------------------------------------------------------------------
QUERY = np.array([[0b00000000]], np.uint8)
DATABASE = np.array(
    [[0b11100000], [0b10000000], [0b11000000], [0b01000000], [0b11110000]],
    np.uint8,
)
# Single-label: the query has class 0; items 0, 3, 4 are class 0 (relevant).
# Ranked relevance (items 1, 3, 2, 0, 4): [0, 1, 0, 1, 1], 3 relevant in all.
QUERY_LABELS = np.array([0])
DATABASE_LABELS = np.array([0, 1, 1, 0, 0])


def test_hamming_distances_hand_values():
    # 0b10110000 has three set bits -> 3 from zero; 0b10110001 differs from
    # 0b10110000 in the last bit only -> 1.
    d = metrics.hamming_distances(
        np.array([[0b10110000]], np.uint8),
        np.array([[0b00000000], [0b10110001], [0b10110000]], np.uint8),
    )
    np.testing.assert_array_equal(d, [[3, 1, 0]])
    assert d.dtype == np.int16
    # Two bytes: 0xFF vs 0x0F differ in 4 bits, 0x00 vs 0x01 in 1 -> 5; all 16
    # bits differ between 0x0000 and 0xFFFF.
    d = metrics.hamming_distances(
        np.array([[0xFF, 0x00], [0x00, 0x00]], np.uint8),
        np.array([[0x0F, 0x01], [0xFF, 0xFF]], np.uint8),
    )
    np.testing.assert_array_equal(d, [[5, 8], [5, 16]])


def test_hamming_distances_matches_bit_order_of_packbits():
    bits = np.array([[1, 0, 1, 1, 0, 0, 0, 0, 1]], bool)  # 9 bits, padded to 16
    codes = np.packbits(bits, axis=1)
    assert codes.tolist() == [[0b10110000, 0b10000000]]
    d = metrics.hamming_distances(codes, np.zeros((1, 2), np.uint8))
    assert d.tolist() == [[4]]


def test_hamming_distances_int32_for_long_codes():
    codes = np.zeros((1, 32768 // 8), np.uint8)
    d = metrics.hamming_distances(codes, np.full_like(codes, 0xFF))
    assert d.dtype == np.int32 and d[0, 0] == 32768


def test_relevance_single_and_multi_label():
    np.testing.assert_array_equal(
        metrics.relevance(np.array([0, 2]), np.array([0, 1, 2, 0])),
        [[True, False, False, True], [False, False, True, False]],
    )
    # Multi-hot: relevant when at least one label is shared.
    np.testing.assert_array_equal(
        metrics.relevance(
            np.array([[1, 0, 1]]), np.array([[0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]])
        ),
        [[False, True, True, False]],
    )


def test_rank_breaks_ties_by_database_index():
    np.testing.assert_array_equal(
        metrics.rank(np.array([[3, 1, 2, 1, 4]], np.int16)), [[1, 3, 2, 0, 4]]
    )
    np.testing.assert_array_equal(
        metrics.rank(np.array([[0.3, 0.1, 0.2, 0.1, 0.5]])), [[1, 3, 2, 0, 4]]
    )


def test_map_all_golden_and_tie_break():
    # Ranked relevance [0, 1, 0, 1, 1]: P@2 = 1/2, P@4 = 2/4, P@5 = 3/5, over
    # 3 relevant: (0.5 + 0.5 + 0.6) / 3 = 0.5333. Had the tie gone the other
    # way (item 3 before item 1), it would be (1 + 0.5 + 0.6) / 3 = 0.7.
    for normalization in metrics.NORMALIZATIONS:  # equal at K = N
        got = metrics.mean_average_precision(
            QUERY, DATABASE, QUERY_LABELS, DATABASE_LABELS, normalization=normalization
        )
        assert got == pytest.approx(1.6 / 3)
    # k = N is the same as k = None.
    assert metrics.mean_average_precision(
        QUERY, DATABASE, QUERY_LABELS, DATABASE_LABELS, k=5
    ) == pytest.approx(1.6 / 3)


def test_map_at_k_normalizations_differ():
    # Top 3 relevance [0, 1, 0]: sum of rel_i * P@i = 1/2.
    # "retrieved": D = 1 relevant in the top 3 -> 0.5.
    # "min_k_relevant": D = min(3, 3 relevant in the database) = 3 -> 1/6.
    kwargs = dict(k=3)
    assert metrics.mean_average_precision(
        QUERY, DATABASE, QUERY_LABELS, DATABASE_LABELS, normalization="retrieved", **kwargs
    ) == pytest.approx(0.5)
    assert metrics.mean_average_precision(
        QUERY, DATABASE, QUERY_LABELS, DATABASE_LABELS, normalization="min_k_relevant", **kwargs
    ) == pytest.approx(1 / 6)
    # Top 4 relevance [0, 1, 0, 1]: sum = 1/2 + 2/4 = 1. "retrieved": D = 2 ->
    # 0.5; "min_k_relevant": D = min(4, 3) = 3 -> 1/3.
    assert metrics.mean_average_precision(
        QUERY, DATABASE, QUERY_LABELS, DATABASE_LABELS, k=4
    ) == pytest.approx(0.5)
    assert metrics.mean_average_precision(
        QUERY, DATABASE, QUERY_LABELS, DATABASE_LABELS, k=4, normalization="min_k_relevant"
    ) == pytest.approx(1 / 3)


def test_map_multi_label_golden():
    # Query labels {0, 2}. Items: 0 {1} no, 1 {2} yes, 2 {0, 1} yes, 3 {1} no,
    # 4 {} no. Ranked (1, 3, 2, 0, 4) relevance [1, 0, 1, 0, 0]:
    # AP@all = (1/1 + 2/3) / 2 = 0.8333.
    query_labels = np.array([[1, 0, 1]])
    database_labels = np.array([[0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    assert metrics.mean_average_precision(
        QUERY, DATABASE, query_labels, database_labels
    ) == pytest.approx(5 / 6)


def test_map_no_relevant_policies():
    # A second query (same code) of class 2, which no database item has: its
    # AP denominator is 0. "zero": (0.5333 + 0) / 2; "drop": 0.5333 alone.
    queries = np.repeat(QUERY, 2, axis=0)
    labels = np.array([0, 2])
    assert metrics.mean_average_precision(
        queries, DATABASE, labels, DATABASE_LABELS
    ) == pytest.approx(1.6 / 6)
    assert metrics.mean_average_precision(
        queries, DATABASE, labels, DATABASE_LABELS, no_relevant="drop"
    ) == pytest.approx(1.6 / 3)
    # With "retrieved", the denominator is 0 also when relevant items exist but
    # none is in the top K: at k = 1 the class-0 query's top item is
    # irrelevant, so "drop" leaves no query and raises.
    assert metrics.mean_average_precision(queries, DATABASE, labels, DATABASE_LABELS, k=1) == 0.0
    with pytest.raises(ValueError, match="no query"):
        metrics.mean_average_precision(
            queries, DATABASE, labels, DATABASE_LABELS, k=1, no_relevant="drop"
        )


def test_map_with_precomputed_distances():
    # Real-valued distances with the same order and tie as the codes.
    distances = np.array([[0.3, 0.1, 0.2, 0.1, 0.5]])
    assert metrics.mean_average_precision(
        None, None, QUERY_LABELS, DATABASE_LABELS, distances=distances
    ) == pytest.approx(1.6 / 3)
    assert metrics.precision_at_k(
        None, None, QUERY_LABELS, DATABASE_LABELS, k=2, distances=distances
    ) == pytest.approx(0.5)


def test_precision_at_k_golden():
    # Ranked relevance [0, 1, 0, 1, 1].
    for k, expected in [(1, 0.0), (2, 1 / 2), (3, 1 / 3), (4, 2 / 4), (5, 3 / 5)]:
        assert metrics.precision_at_k(
            QUERY, DATABASE, QUERY_LABELS, DATABASE_LABELS, k=k
        ) == pytest.approx(expected)


def test_precision_recall_at_radius_golden():
    # Within distance 2: items 1, 3, 2; relevant among them: item 3.
    # Precision 1/3; recall 1 of 3 relevant = 1/3.
    p, r = metrics.precision_recall_at_radius(QUERY, DATABASE, QUERY_LABELS, DATABASE_LABELS)
    assert (p, r) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    # Radius 0 retrieves nothing (no code equals the query): precision 0 with
    # empty="zero", undefined (NaN) with "drop" as the only query is left out.
    p, r = metrics.precision_recall_at_radius(
        QUERY, DATABASE, QUERY_LABELS, DATABASE_LABELS, radius=0
    )
    assert (p, r) == (0.0, 0.0)
    p, _ = metrics.precision_recall_at_radius(
        QUERY, DATABASE, QUERY_LABELS, DATABASE_LABELS, radius=0, empty="drop"
    )
    assert math.isnan(p)


def test_precision_recall_at_radius_empty_policies():
    # Two queries: 0b00000000 (radius 0 retrieves nothing) and 0b10000000,
    # equal to item 1 only, class 1 (relevant: items 1, 2): at radius 0 it
    # retrieves item 1, relevant, so precision 1 and recall 1/2.
    # "zero": precision (0 + 1) / 2; "drop": 1 / 1. Recall (0 + 1/2) / 2.
    queries = np.array([[0b00000000], [0b10000000]], np.uint8)
    labels = np.array([0, 1])
    p, r = metrics.precision_recall_at_radius(queries, DATABASE, labels, DATABASE_LABELS, radius=0)
    assert (p, r) == (pytest.approx(0.5), pytest.approx(0.25))
    p, r = metrics.precision_recall_at_radius(
        queries, DATABASE, labels, DATABASE_LABELS, radius=0, empty="drop"
    )
    assert (p, r) == (pytest.approx(1.0), pytest.approx(0.25))


def test_precision_recall_curve_golden():
    curve = metrics.precision_recall_curve(QUERY, DATABASE, QUERY_LABELS, DATABASE_LABELS)
    np.testing.assert_array_equal(curve["radius"], np.arange(9))
    # r = 0: nothing retrieved -> 0, 0. r = 1: items 1, 3 -> 1/2, 1/3.
    # r = 2: + item 2 -> 1/3, 1/3. r = 3: + item 0 -> 2/4, 2/3.
    # r >= 4: all five -> 3/5, 1.
    np.testing.assert_allclose(
        curve["precision"], [0, 1 / 2, 1 / 3, 2 / 4] + [3 / 5] * 5
    )
    np.testing.assert_allclose(curve["recall"], [0, 1 / 3, 1 / 3, 2 / 3] + [1] * 5)
    drop = metrics.precision_recall_curve(
        QUERY, DATABASE, QUERY_LABELS, DATABASE_LABELS, empty="drop"
    )
    assert math.isnan(drop["precision"][0])
    np.testing.assert_allclose(drop["precision"][1:], curve["precision"][1:])


def test_evaluate_golden():
    result = metrics.evaluate(
        QUERY, DATABASE, QUERY_LABELS, DATABASE_LABELS, ks=(2, 5), map_k=3
    )
    assert result["map"] == pytest.approx(0.5)
    assert result["map_k"] == 3
    assert result["precision@2"] == pytest.approx(0.5)
    assert result["precision@5"] == pytest.approx(0.6)
    assert result["precision@r2"] == pytest.approx(1 / 3)
    assert result["recall@r2"] == pytest.approx(1 / 3)
    protocol = result["protocol"]
    assert protocol["normalization"] == "retrieved"
    assert protocol["no_relevant"] == "zero"
    assert protocol["map_k"] == 3 and protocol["ks"] == [2, 5] and protocol["radius"] == 2
    assert protocol["bits"] == 8 and protocol["num_queries"] == 1
    assert protocol["num_database"] == 5 and protocol["queries_without_relevant"] == 0
    assert metrics.evaluate(QUERY, DATABASE, QUERY_LABELS, DATABASE_LABELS, ks=())[
        "map_k"
    ] == "all"


# --------------------------------------------------------------------------
# Agreement with a slow, obviously correct reference.
# --------------------------------------------------------------------------


def _ref_distance(a, b):
    return sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b))


def _ref_relevant(a, b):
    if np.ndim(a) == 0:
        return a == b
    return any(x and y for x, y in zip(a, b))


def _ref_tables(queries, database, query_labels, database_labels):
    """Per query: list of (distance, index, relevant) in ranked order."""
    tables = []
    for q, ql in zip(queries, query_labels):
        rows = [
            (_ref_distance(q, d), j, _ref_relevant(ql, dl))
            for j, (d, dl) in enumerate(zip(database, database_labels))
        ]
        tables.append(sorted(rows, key=lambda row: (row[0], row[1])))
    return tables


def _ref_map(tables, k, normalization, no_relevant):
    aps = []
    for rows in tables:
        k_ = k or len(rows)
        found, total = 0, 0.0
        for i, (_, _, rel) in enumerate(rows[:k_], start=1):
            if rel:
                found += 1
                total += found / i
        all_relevant = sum(rel for _, _, rel in rows)
        denominator = found if normalization == "retrieved" else min(k_, all_relevant)
        if denominator == 0:
            if no_relevant == "zero":
                aps.append(0.0)
        else:
            aps.append(total / denominator)
    return sum(aps) / len(aps) if aps else None  # None: every query dropped


def _ref_precision_at_k(tables, k):
    return sum(sum(rel for _, _, rel in rows[:k]) / k for rows in tables) / len(tables)


def _ref_radius(tables, radius, empty):
    precisions, recalls = [], []
    for rows in tables:
        retrieved = [rel for d, _, rel in rows if d <= radius]
        relevant = sum(rel for _, _, rel in rows)
        if retrieved:
            precisions.append(sum(retrieved) / len(retrieved))
        elif empty == "zero":
            precisions.append(0.0)
        recalls.append(sum(retrieved) / relevant if relevant else 0.0)
    precision = sum(precisions) / len(precisions) if precisions else math.nan
    return precision, sum(recalls) / len(recalls)


def _random_problem(seed, bits, multi_label):
    rng = np.random.default_rng(seed)
    num_queries, num_database = 7, int(rng.integers(150, 300))
    # Few distinct bits per code so distances tie often, and a class signal
    # so that rankings are not random.
    num_classes = 4
    centers = rng.random((num_classes, bits)) < 0.5
    query_classes = rng.integers(0, num_classes, num_queries)
    database_classes = rng.integers(0, num_classes, num_database)

    def codes(classes):
        flips = rng.random((len(classes), bits)) < 0.25
        return np.packbits(centers[classes] ^ flips, axis=1)

    if multi_label:
        query_labels = (rng.random((num_queries, 5)) < 0.3).astype(np.int64)
        database_labels = (rng.random((num_database, 5)) < 0.3).astype(np.int64)
        query_labels[0] = 0  # a query with no relevant item
    else:
        query_labels, database_labels = query_classes, database_classes.copy()
        database_labels[database_labels == query_labels[0]] = num_classes  # none relevant
    return codes(query_classes), codes(database_classes), query_labels, database_labels


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bits", [8, 16, 24, 64])
@pytest.mark.parametrize("multi_label", [False, True])
def test_agrees_with_reference(seed, bits, multi_label, monkeypatch):
    # A small chunk size so that the chunked path runs over several chunks.
    monkeypatch.setattr(metrics, "_CHUNK_ENTRIES", 500)
    queries, database, query_labels, database_labels = _random_problem(
        seed, bits, multi_label
    )
    args = (queries, database, query_labels, database_labels)
    tables = _ref_tables(*args)
    num_database = len(database)

    ref_distances = [[_ref_distance(q, d) for d in database] for q in queries]
    np.testing.assert_array_equal(metrics.hamming_distances(queries, database), ref_distances)

    for k in (None, 1, 10, 50, num_database):
        for normalization in metrics.NORMALIZATIONS:
            for no_relevant in metrics.NO_RELEVANT_POLICIES:
                expected = _ref_map(tables, k, normalization, no_relevant)
                kwargs = dict(k=k, normalization=normalization, no_relevant=no_relevant)
                if expected is None:
                    with pytest.raises(ValueError, match="no query"):
                        metrics.mean_average_precision(*args, **kwargs)
                    continue
                got = metrics.mean_average_precision(*args, **kwargs)
                assert got == pytest.approx(expected, abs=1e-12), (k, normalization, no_relevant)
        if k is not None:
            assert metrics.precision_at_k(*args, k=k) == pytest.approx(
                _ref_precision_at_k(tables, k), abs=1e-12
            )

    for empty in metrics.EMPTY_POLICIES:
        curve = metrics.precision_recall_curve(*args, empty=empty)
        for radius in range(bits + 1):
            expected = _ref_radius(tables, radius, empty)
            np.testing.assert_allclose(
                (curve["precision"][radius], curve["recall"][radius]), expected, atol=1e-12
            )
        for radius in (0, 2, bits // 2, bits + 3):
            got = metrics.precision_recall_at_radius(*args, radius=radius, empty=empty)
            np.testing.assert_allclose(got, _ref_radius(tables, radius, empty), atol=1e-12)

    result = metrics.evaluate(
        *args, ks=(1, 10), map_k=20, radius=3, normalization="min_k_relevant",
        no_relevant="drop", empty="drop",
    )
    assert result["map"] == pytest.approx(_ref_map(tables, 20, "min_k_relevant", "drop"))
    assert result["precision@10"] == pytest.approx(_ref_precision_at_k(tables, 10))
    np.testing.assert_allclose(
        (result["precision@r3"], result["recall@r3"]), _ref_radius(tables, 3, "drop")
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_precomputed_distances_agree_with_reference(seed, monkeypatch):
    # Real-valued distances rounded to one decimal, so ties are frequent.
    monkeypatch.setattr(metrics, "_CHUNK_ENTRIES", 300)
    rng = np.random.default_rng(seed)
    distances = np.round(rng.random((6, 120)), 1)
    query_labels = rng.integers(0, 3, 6)
    database_labels = rng.integers(0, 3, 120)
    tables = [
        sorted(
            ((d, j, ql == database_labels[j]) for j, d in enumerate(row)),
            key=lambda row: (row[0], row[1]),
        )
        for row, ql in zip(distances, query_labels)
    ]
    for k in (None, 5, 60):
        for normalization in metrics.NORMALIZATIONS:
            got = metrics.mean_average_precision(
                None, None, query_labels, database_labels, k=k,
                normalization=normalization, distances=distances,
            )
            assert got == pytest.approx(_ref_map(tables, k, normalization, "zero"), abs=1e-12)
    assert metrics.precision_at_k(
        None, None, query_labels, database_labels, k=7, distances=distances
    ) == pytest.approx(_ref_precision_at_k(tables, 7), abs=1e-12)


def test_chunking_does_not_change_results(monkeypatch):
    queries, database, query_labels, database_labels = _random_problem(3, 32, True)
    args = (queries, database, query_labels, database_labels)
    whole = metrics.evaluate(*args, ks=(5,))
    curve = metrics.precision_recall_curve(*args)
    monkeypatch.setattr(metrics, "_CHUNK_ENTRIES", 1)  # one query per chunk
    assert metrics.evaluate(*args, ks=(5,)) == whole
    chunked = metrics.precision_recall_curve(*args)
    for key in curve:
        np.testing.assert_array_equal(chunked[key], curve[key])


def test_average_precision_low_level():
    # Rows: [0, 1, 0, 1, 1] -> 1.6 / 3; all zeros -> NaN (denominator 0).
    ranked = np.array([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0]], bool)
    ap = metrics.average_precision(ranked)
    assert ap[0] == pytest.approx(1.6 / 3) and math.isnan(ap[1])
    ap = metrics.average_precision(ranked, k=3, normalization="min_k_relevant")
    assert ap[0] == pytest.approx(1 / 6)


# --------------------------------------------------------------------------
# Validation: every error says what was expected and what was received.
# --------------------------------------------------------------------------

LABELS_2 = np.array([0, 1])


@pytest.mark.parametrize(
    "codes, received",
    [
        (np.zeros((2, 1), np.int64), "dtype=int64"),
        (np.zeros((2, 1), np.float32), "dtype=float32"),
        (np.zeros(2, np.uint8), "shape=(2,)"),
        (np.zeros((2, 1, 1), np.uint8), "shape=(2, 1, 1)"),
        (np.zeros((2, 0), np.uint8), "shape=(2, 0)"),
    ],
)
def test_bad_query_codes(codes, received):
    with pytest.raises(ValueError, match=r"query_codes must be packed uint8") as info:
        metrics.mean_average_precision(codes, np.zeros((2, 1), np.uint8), LABELS_2, LABELS_2)
    assert received in str(info.value) and "(n, K/8)" in str(info.value)


def test_bad_database_codes():
    queries = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError) as info:
        metrics.hamming_distances(queries, np.zeros((2, 2), np.int64))
    assert "database_codes" in str(info.value) and "dtype=int64" in str(info.value)
    assert "(n, 2)" in str(info.value)
    # Width mismatch: 16-bit queries against 8-bit database.
    with pytest.raises(ValueError) as info:
        metrics.hamming_distances(queries, np.zeros((2, 1), np.uint8))
    assert "(n, 2)" in str(info.value) and "shape=(2, 1)" in str(info.value)


def test_empty_database_and_queries():
    with pytest.raises(ValueError, match=r"database_codes must hold at least one.*shape=\(0, 1\)"):
        metrics.mean_average_precision(
            np.zeros((2, 1), np.uint8), np.zeros((0, 1), np.uint8), LABELS_2, np.array([], int)
        )
    with pytest.raises(ValueError, match=r"query_codes must hold at least one.*shape=\(0, 1\)"):
        metrics.precision_recall_curve(
            np.zeros((0, 1), np.uint8), np.zeros((2, 1), np.uint8), np.array([], int), LABELS_2
        )
    with pytest.raises(ValueError, match=r"at least one query.*shape=\(0, 3\)"):
        metrics.mean_average_precision(
            None, None, np.array([], int), np.zeros(3, int), distances=np.zeros((0, 3))
        )


def test_bad_labels():
    codes = np.zeros((2, 1), np.uint8)
    with pytest.raises(ValueError, match=r"query_labels.*expected 2 rows.*shape=\(3,\)"):
        metrics.mean_average_precision(codes, codes, np.array([0, 1, 2]), LABELS_2)
    with pytest.raises(ValueError, match=r"database_labels.*expected 2 rows.*shape=\(1, 3\)"):
        metrics.mean_average_precision(
            codes, codes, np.zeros((2, 3), int), np.zeros((1, 3), int)
        )
    with pytest.raises(ValueError, match=r"integer dtype.*dtype=float64"):
        metrics.precision_at_k(codes, codes, np.array([0.0, 1.0]), LABELS_2, k=1)
    with pytest.raises(ValueError, match=r"only 0 and 1.*dtype=int64"):
        metrics.precision_at_k(codes, codes, np.array([[0, 2], [1, 0]]), np.eye(2, dtype=int), k=1)
    with pytest.raises(ValueError, match=r"same kind.*\(2,\) and \(2, 2\)"):
        metrics.precision_at_k(codes, codes, LABELS_2, np.eye(2, dtype=int), k=1)
    with pytest.raises(ValueError, match=r"same kind.*\(2, 2\) and \(2, 3\)"):
        metrics.relevance(np.eye(2, dtype=int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match=r"1-D integer class ids.*shape=\(2, 1, 1\)"):
        metrics.relevance(np.zeros((2, 1, 1), int), LABELS_2)


@pytest.mark.parametrize(
    "kwargs, expected, received",
    [
        ({"normalization": "min_k"}, "'retrieved', 'min_k_relevant'", "normalization='min_k'"),
        ({"no_relevant": "skip"}, "'zero', 'drop'", "no_relevant='skip'"),
        ({"k": 0}, "[1, 2]", "k=0"),
        ({"k": 3}, "[1, 2]", "k=3"),
        ({"k": 1.5}, "[1, 2]", "k=1.5"),
    ],
)
def test_bad_map_options(kwargs, expected, received):
    codes = np.zeros((2, 1), np.uint8)
    with pytest.raises(ValueError) as info:
        metrics.mean_average_precision(codes, codes, LABELS_2, LABELS_2, **kwargs)
    assert expected in str(info.value) and received in str(info.value)


def test_bad_other_options():
    codes = np.zeros((2, 1), np.uint8)
    args = (codes, codes, LABELS_2, LABELS_2)
    with pytest.raises(ValueError, match=r"\[1, 2\].*k=5"):
        metrics.precision_at_k(*args, k=5)
    with pytest.raises(ValueError, match=r"non-negative integer.*radius=-1"):
        metrics.precision_recall_at_radius(*args, radius=-1)
    with pytest.raises(ValueError, match=r"'zero', 'drop'.*empty='none'"):
        metrics.precision_recall_at_radius(*args, empty="none")
    with pytest.raises(ValueError, match=r"'zero', 'drop'.*empty='none'"):
        metrics.precision_recall_curve(*args, empty="none")
    with pytest.raises(ValueError, match=r"ks.*\[1, 2\].*ks=100"):
        metrics.evaluate(*args)  # default ks=(100,) exceeds the database
    with pytest.raises(ValueError, match=r"sequence.*ks=1"):
        metrics.evaluate(*args, ks=1)
    with pytest.raises(ValueError, match=r"map_k.*\[1, 2\].*map_k=0"):
        metrics.evaluate(*args, ks=(1,), map_k=0)


def test_bad_distances():
    with pytest.raises(ValueError, match="not both"):
        metrics.mean_average_precision(
            np.zeros((2, 1), np.uint8), None, LABELS_2, LABELS_2, distances=np.zeros((2, 2))
        )
    with pytest.raises(ValueError, match=r"real-valued.*dtype=bool"):
        metrics.precision_at_k(
            None, None, LABELS_2, LABELS_2, k=1, distances=np.eye(2, dtype=bool)
        )
    with pytest.raises(ValueError, match="NaN"):
        metrics.precision_at_k(
            None, None, LABELS_2, LABELS_2, k=1, distances=np.array([[0, np.nan], [1, 2]])
        )
    with pytest.raises(ValueError, match=r"query_labels.*expected 3 rows"):
        metrics.precision_at_k(None, None, LABELS_2, LABELS_2, k=1, distances=np.zeros((3, 2)))
