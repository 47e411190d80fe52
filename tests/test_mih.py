"""Tests for tfhash.mih: multi-index hashing answers exactly as the scan does."""

import concurrent.futures
import math
import os
import select
import signal

import numpy as np
import pytest

from one_line import refusal
from tfhash import mih
from tfhash.index import HammingIndex, MultiIndexHashing

EVERY = math.inf  # a budget that never hands a query to the scan


def random_codes(rng, n, bits):
    return rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)


def clustered_codes(rng, n, bits, centres=None, flip=0.06):
    """Codes around a few centres, each bit flipped with probability `flip`."""
    if centres is None:
        centres = random_codes(rng, 20, bits)
    flips = np.packbits(rng.random((n, bits)) < flip, axis=1)
    return centres[rng.integers(0, len(centres), n)] ^ flips


def duplicated_codes(rng, n, bits):
    """A few distinct codes, each repeated many times: many exact ties."""
    distinct = clustered_codes(rng, 12, bits, flip=0.1)
    return distinct[rng.integers(0, len(distinct), n)]


DATA = {"random": random_codes, "clustered": clustered_codes, "duplicated": duplicated_codes}


def make(kind, bits, n, nq, seed=0):
    """Database and queries of one kind (queries of the same distribution)."""
    rng = np.random.default_rng([seed, bits, n])
    if kind == "clustered":
        centres = random_codes(rng, 20, bits)
        return clustered_codes(rng, n, bits, centres), clustered_codes(rng, nq, bits, centres)
    database = DATA[kind](rng, n, bits)
    # Duplicated: half the queries are database codes (distance-0 ties).
    queries = DATA[kind](rng, nq, bits) if kind != "duplicated" else np.concatenate(
        [database[rng.integers(0, n, nq // 2)], random_codes(rng, nq - nq // 2, bits)])
    return database, queries


def both(database, ids=None, chunks=1, **options):
    """The scan (reference) and MIH, built alike."""
    bits = database.shape[1] * 8
    scan, ours = HammingIndex(bits), MultiIndexHashing(bits, **options)
    for part in np.array_split(np.arange(len(database)), chunks):
        for index in (scan, ours):
            index.add(database[part], None if ids is None else ids[part])
    return scan, ours


def assert_same_knn(scan, ours, queries, k):
    expected_d, expected_i = scan.search(queries, k)
    got_d, got_i = ours.search(queries, k)
    assert got_d.dtype == np.int32 and got_i.dtype == np.int64
    np.testing.assert_array_equal(got_d, expected_d)
    np.testing.assert_array_equal(got_i, expected_i)


def assert_same_range(scan, ours, queries, radius):
    for got, expected in zip(ours.range_search(queries, radius), scan.range_search(queries, radius)):
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


# ----------------------------------------------------------------------
# k-NN: identical to the scan
# ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "clustered", "duplicated"])
@pytest.mark.parametrize("bits,n", [(32, 6000), (64, 20000), (128, 5000)])
@pytest.mark.parametrize("with_ids", [False, True])
def test_knn_matches_the_scan(kind, bits, n, with_ids):
    database, queries = make(kind, bits, n, 40)
    ids = np.random.default_rng(1).permutation(10 * n)[:n] if with_ids else None
    scan, ours = both(database, ids, budget=EVERY)
    for k in (1, 10, 100, n + 7):
        assert_same_knn(scan, ours, queries, k)
    # Every query answered by the tables (k > ntotal / 2 goes to the scan, not counted).
    assert ours.stats["scan"] == 0 and ours.stats["mih"] == 3 * len(queries)


def test_ties_at_the_kth_distance_keep_insertion_order():
    # 300 copies of one code and 300 of its neighbour: k cuts inside each tie.
    rng = np.random.default_rng(2)
    code = random_codes(rng, 1, 64)
    near = code.copy()
    near[0, 3] ^= 0b100
    database = np.concatenate([np.repeat(code, 300, 0), np.repeat(near, 300, 0), random_codes(rng, 2000, 64)])
    database = database[rng.permutation(len(database))]
    scan, ours = both(database, budget=EVERY)
    for k in (1, 150, 299, 300, 301, 450, 600, 601):
        assert_same_knn(scan, ours, np.concatenate([code, near]), k)


@pytest.mark.parametrize("bits,m", [(64, 2), (32, 1), (64, 8), (24, 2), (40, 3), (8, 1)])
def test_knn_with_any_substring_split(bits, m):
    # m = 2 at 64 bits and m = 1 at 32: 32-bit substrings (sorted-value tables);
    # 24 and 40 bits: codes not a whole number of 64-bit words.
    database, queries = make("clustered", bits, 3000, 30)
    scan, ours = both(database, m=m, budget=EVERY)
    assert ours.m == m
    for k in (1, 10, 100):
        assert_same_knn(scan, ours, queries, k)


@pytest.mark.parametrize("m", [16, 8, 5])
def test_radius_reaching_every_bit_of_the_substrings(m):
    # The query is the complement of most codes: the answer needs the search
    # radius up to all 16 bits, each substring enumerated to its last value.
    database = np.zeros((1000, 2), np.uint8)
    database[::10, 1] = 0xFF  # 100 codes at distance 8, 900 at 16
    query = np.full((1, 2), 0xFF, np.uint8)
    scan, ours = both(database, m=m, budget=EVERY)
    for k in (1, 100, 101, 499):
        assert_same_knn(scan, ours, query, k)
    assert_same_range(scan, ours, query, 16)


def test_large_k_below_half_the_index():
    database, queries = make("duplicated", 64, 3000, 20)
    scan, ours = both(database, budget=EVERY)
    assert_same_knn(scan, ours, queries, 1499)
    assert ours.stats["mih"] == 20


@pytest.mark.parametrize("budget", [1e-9, mih.DEFAULT_BUDGET, 0.05])
def test_budget_fallback_gives_the_same_answers(budget):
    # Random 64-bit codes: far apart, so some (or all) queries pass the budget
    # and are answered by the scan, spliced in among the others.
    database, _ = make("random", 64, 20000, 0)
    queries = np.concatenate([database[:30], make("random", 64, 10, 30, seed=5)[1]])
    scan, ours = both(database, budget=budget)
    for k in (1, 10, 100):
        assert_same_knn(scan, ours, queries, k)
    assert ours.stats["scan"] > 0
    if budget == 1e-9:
        assert ours.stats["mih"] == 0
    else:
        assert ours.stats["mih"] > 0


@pytest.mark.parametrize("kind", ["duplicated", "random"])
@pytest.mark.parametrize("nq", [1, 3, 300])
def test_both_fallback_scans_rank_ties_by_position(kind, nq):
    # A few queries given up on are scanned on MIH's threads (numba), many by
    # one faiss batch (over 4 per thread): the same ranking either way.
    database, queries = make(kind, 64, 5000, nq, seed=nq)
    scan, ours = both(database, ids=np.arange(5000) * 7 % 5003, budget=1e-9)
    for k in (1, 37, 1000, 2499):
        assert_same_knn(scan, ours, queries, k)
    assert ours.stats == {"mih": 0, "scan": 4 * nq, "work": ours.stats["work"]}


def test_adds_after_a_search_rebuild_the_tables():
    database, queries = make("clustered", 64, 6000, 20)
    ids = np.arange(6000) * 3
    scan, ours = both(database[:2000], ids[:2000], budget=EVERY)
    assert_same_knn(scan, ours, queries, 10)
    built = ours.table_bytes
    assert built > 0 and ours.memory_bytes == ours.code_bytes + ours._ids.nbytes + built
    for part in (slice(2000, 2001), slice(2001, 6000)):
        scan.add(database[part], ids[part])
        ours.add(database[part], ids[part])
        assert ours.table_bytes == 0  # stale tables dropped at once
        assert_same_knn(scan, ours, queries, 10)


def test_chunked_adds_equal_one_add():
    database, queries = make("clustered", 128, 4000, 20)
    scan, ours = both(database, chunks=7, budget=EVERY)
    assert_same_knn(scan, ours, queries, 100)


def test_no_queries_and_tiny_indexes():
    ours = MultiIndexHashing(64)
    ours.add(np.zeros((1, 8), np.uint8))
    d, i = ours.search(np.zeros((0, 8), np.uint8), 5)
    assert d.shape == i.shape == (0, 1)
    d, i = ours.search(np.full((1, 8), 255, np.uint8), 5)
    assert d.tolist() == [[64]] and i.tolist() == [[0]]
    lims, d, i = ours.range_search(np.zeros((0, 8), np.uint8), 3)
    assert lims.tolist() == [0] and d.size == i.size == 0


# ----------------------------------------------------------------------
# Range search
# ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "clustered", "duplicated"])
@pytest.mark.parametrize("bits", [32, 64, 128])
def test_range_search_matches_the_scan(kind, bits):
    database, queries = make(kind, bits, 4000, 25)
    ids = np.arange(4000)[::-1].copy()
    scan, ours = both(database, ids, budget=EVERY)
    for radius in (0, 1, bits // 16, bits // 8, bits // 4):
        assert_same_range(scan, ours, queries, radius)


def test_range_search_with_fallback_and_many_results():
    database, queries = make("duplicated", 64, 8000, 30)
    scan, ours = both(database, budget=0.05)
    for radius in (0, 4, 20, 64):  # 64: every code, for every query
        assert_same_range(scan, ours, queries, radius)
    assert ours.stats["scan"] > 0 and ours.stats["mih"] > 0


# ----------------------------------------------------------------------
# Input checks: HammingIndex's, message for message
# ----------------------------------------------------------------------


BAD_CODES = [
    np.zeros((3, 8), np.int64),  # wrong dtype
    np.zeros(8, np.uint8),  # 1-D
    np.zeros((3, 7), np.uint8),  # wrong width
    np.zeros((3, 8), np.float32),
]


@pytest.mark.parametrize("codes", BAD_CODES)
def test_bad_codes_and_queries_refused_as_the_scan_refuses(codes):
    scan, ours = both(make("random", 64, 100, 0)[0])
    for method in ("add", "search", "range_search"):
        args = (codes,) if method == "add" else (codes, 3)
        assert refusal(lambda: getattr(ours, method)(*args)) == refusal(lambda: getattr(scan, method)(*args))
    assert ours.ntotal == 100  # a refused add changes nothing


@pytest.mark.parametrize("k", [0, -1, 2.0, True, "3", None])
def test_bad_k_refused_as_the_scan_refuses(k):
    scan, ours = both(make("random", 64, 100, 0)[0])
    queries = np.zeros((1, 8), np.uint8)
    assert refusal(lambda: ours.search(queries, k)) == refusal(lambda: scan.search(queries, k))


@pytest.mark.parametrize("radius", [-1, 65, 1.5, None])
def test_bad_radius_refused_as_the_scan_refuses(radius):
    scan, ours = both(make("random", 64, 100, 0)[0])
    queries = np.zeros((1, 8), np.uint8)
    assert refusal(lambda: ours.range_search(queries, radius)) == refusal(lambda: scan.range_search(queries, radius))


def test_bad_ids_and_empty_index_refused_as_the_scan_refuses():
    codes = np.zeros((2, 8), np.uint8)
    for ids in (np.array([-1, 2]), np.array([1.0, 2.0]), np.array([1])):
        scan, ours = HammingIndex(64), MultiIndexHashing(64)
        assert refusal(lambda: ours.add(codes, ids)) == refusal(lambda: scan.add(codes, ids))
        assert ours.ntotal == 0
    scan, ours = HammingIndex(64), MultiIndexHashing(64)
    queries = np.zeros((1, 8), np.uint8)
    assert refusal(lambda: ours.search(queries, 1)) == refusal(lambda: scan.search(queries, 1))
    assert refusal(lambda: ours.range_search(queries, 1)) == refusal(lambda: scan.range_search(queries, 1))
    refusal(ours.build)


@pytest.mark.parametrize("options", [{"bits": 12}, {"bits": 64, "m": 1}, {"bits": 64, "m": 65},
                                     {"bits": 64, "m": 2.0}, {"bits": 64, "budget": 0},
                                     {"bits": 64, "budget": "1"}])
def test_bad_construction_refused(options):
    refusal(lambda: MultiIndexHashing(**options))


# ----------------------------------------------------------------------
# Files, memory, the choice
# ----------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    database, queries = make("clustered", 64, 3000, 20)
    scan, ours = both(database, ids=np.arange(3000) + 5, budget=EVERY)
    ours.save(tmp_path / "codes.tfhi")
    loaded = MultiIndexHashing.load(tmp_path / "codes.tfhi")
    assert isinstance(loaded, MultiIndexHashing) and loaded.has_ids and loaded.table_bytes == 0
    loaded.budget = EVERY
    assert_same_knn(scan, loaded, queries, 10)
    # The scan reads the same file.
    assert_same_knn(HammingIndex.load(tmp_path / "codes.tfhi"), loaded, queries, 10)


def test_memory_counts_codes_ids_and_tables():
    database, _ = make("random", 64, 5000, 0)
    ours = MultiIndexHashing(64)
    ours.add(database)
    assert ours.memory_bytes == ours.code_bytes
    ours.build()
    t = ours._mih_tables
    # Positions: 4 bytes per code per table; dense offsets: 2**L + 1 per table.
    assert t.rows.nbytes == 4 * ours.m * 5000
    assert ours.memory_bytes == ours.code_bytes + t.rows.nbytes + t.dense_off.nbytes + t.skeys.nbytes + t.soff.nbytes
    assert repr(ours) == f"MultiIndexHashing(bits=64, m={ours.m}, ntotal=5000, has_ids=False)"


def test_default_m_follows_log2_n():
    assert mih.default_m(1_000_000, 64) == 4  # 16-bit substrings
    assert mih.default_m(10_000_000, 64) == 3  # 22, 21, 21
    assert mih.default_m(1_000_000, 128) == 7
    assert mih.default_m(2**20, 60) == 3
    assert mih.default_m(100, 32) == 4
    assert mih.default_m(1, 64) == 8  # substrings of at most 32 and at least 8 bits
    assert mih.default_m(10**12, 256) >= 8


def test_choose():
    # Clustered codes at 1M (spread ~0.07): MIH; uniform random (~0.27): the scan.
    assert mih.choose(1_000_000, 64, 0.07, k=100) == "mih"
    assert mih.choose(10_000_000, 64, 0.05, k=100) == "mih"
    assert mih.choose(1_000_000, 128, 0.06, k=10) == "mih"
    assert mih.choose(1_000_000, 64, 0.27, k=100) == "scan"
    assert mih.choose(1_000_000, 128, 0.35, k=1) == "scan"
    assert mih.choose(10_000, 64, 0.01) == "scan"  # too small to matter
    assert mih.choose(1_000_000, 64, 0.0, k=500_000) == "scan"
    for bad in ({"n": -1}, {"spread": 1.5}, {"k": 0}, {"bits": 0}):
        refusal(lambda: mih.choose(**{"n": 1000, "bits": 64, "spread": 0.1, **bad}))


def test_estimate_spread():
    database, queries = make("duplicated", 64, 2000, 10)
    scan, ours = both(database)
    expected = scan.search(queries, 5)[0][:, -1].mean() / 64
    assert mih.estimate_spread(ours, queries, k=5) == pytest.approx(expected)
    assert mih.estimate_spread(scan, queries, k=5) == pytest.approx(expected)


def test_searches_from_threads_and_a_forked_child():
    database, queries = make("clustered", 64, 20000, 64)
    scan, ours = both(database, budget=EVERY)
    expected = scan.search(queries, 10)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for got in pool.map(lambda _: ours.search(queries, 10), range(8)):
            np.testing.assert_array_equal(got[1], expected[1])
    # A child forked after the thread pool started makes its own pool (the
    # parent's threads do not exist there).
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            os.write(write, ours.search(queries, 10)[1].tobytes())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        if not select.select([pipe], [], [], 60)[0]:  # a stale pool would hang the child
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            pytest.fail("the forked child's search did not answer in 60 s")
        got = np.frombuffer(pipe.read(), np.int64).reshape(expected[1].shape)
    assert os.waitpid(child, 0)[1] == 0
    np.testing.assert_array_equal(got, expected[1])


# ----------------------------------------------------------------------
# HammingIndex(method=...): the same answers, whichever way they are found
# ----------------------------------------------------------------------

AUTO_N = 120_000  # past mih._MIN_N (100,000): below it "auto" always scans


def many_clusters(n, nq, seed=0):
    """64-bit codes and queries around 1,000 centres (6% of bits flipped):
    ~120 codes a cluster, where the tables pay (unlike `make`'s 20 centres,
    where a probe meets thousands of codes and most queries are given up on)."""
    rng = np.random.default_rng(seed)
    centres = random_codes(rng, 1000, 64)
    return clustered_codes(rng, n, 64, centres), clustered_codes(rng, nq, 64, centres)


def with_method(database, method):
    index = HammingIndex(database.shape[1] * 8, method=method)
    index.add(database)
    return index


@pytest.mark.parametrize("method", ["mih", "auto"])
def test_hamming_index_by_tables_answers_as_the_scan(method):
    database, queries = many_clusters(AUTO_N, 100)
    scan, index = with_method(database, "scan"), with_method(database, method)
    for k in (1, 10, 100):
        assert_same_knn(scan, index, queries, k)
    # The tables answered ("auto" measured them to pay at k = 1 and 10), and
    # they count in the index's memory.
    assert method == "mih" or mih.auto_choice(index, 1) == mih.auto_choice(index, 10) == "mih"
    assert index._mih_tables is not None and scan._mih_tables is None
    assert index.memory_bytes == scan.memory_bytes + index._mih_tables.nbytes > scan.memory_bytes
    assert_same_range(scan, index, queries, 7)
    # An add makes the tables stale: dropped, then rebuilt with the new codes.
    for either in (scan, index):
        either.add(database[:10] ^ np.uint8(1))
    assert index._mih_tables is None
    assert_same_knn(scan, index, queries, 10)


def test_auto_scans_uniform_codes_and_small_indexes():
    # Uniform random codes: the 100th neighbour of a query lies ~20 of 64 bits
    # away, too far for substring probes to pay (mih.choose); 20,000 codes:
    # below the size where tables pay at all.
    for database, queries in (make("random", 64, AUTO_N, 20), make("clustered", 64, 20_000, 20)):
        scan, index = with_method(database, "scan"), with_method(database, "auto")
        assert_same_knn(scan, index, queries, 100)
        assert_same_range(scan, index, queries, 3)
        assert index._mih_tables is None and index.memory_bytes == scan.memory_bytes


def test_auto_decides_on_the_queries_asked(monkeypatch):
    # Clustered codes look made for the tables (mih.choose, on the index's own
    # codes), but uniform random queries lie ~20 of 64 bits from their 10th
    # neighbour (a centre's own codes lie ~7 bits from it): measured on the
    # first mih._PROBE of them, the tables cost more than half a scan (each is
    # given up on: a scan plus the work), so auto scans the rest, and the next
    # calls, until the index changes. Queries near the codes keep the tables.
    database, near = many_clusters(AUTO_N, 40)
    far = random_codes(np.random.default_rng(5), 40, 64)
    scan = with_method(database, "scan")
    far_first, near_first = with_method(database, "auto"), with_method(database, "auto")
    by_tables, knn = [], mih.knn
    monkeypatch.setattr(mih, "knn", lambda index, queries, k, **kw: by_tables.append(len(queries)) or knn(
        index, queries, k, **kw))
    assert mih.auto_choice(far_first, 10) == "mih"  # nothing measured yet: the tables are tried
    assert_same_knn(scan, far_first, far, 10)
    assert by_tables == [mih._PROBE] and mih.auto_choice(far_first, 10) == "scan"  # the rest: scanned
    assert far_first._mih_tables is None and far_first.memory_bytes == scan.memory_bytes  # freed, unused
    assert_same_knn(scan, far_first, near, 10)  # scanned too, until the index changes
    assert by_tables == [mih._PROBE] and far_first._mih_tables is None
    # Measured over calls: 3 queries a call, the first mih._PROBE (8) by the tables, then as they pay.
    by_tables.clear()
    for part in np.array_split(near[:12], 4):
        assert_same_knn(scan, near_first, part, 10)
    assert by_tables == [3, 3, 2, 1, 3] and mih.auto_choice(near_first, 10) == "mih"
    assert mih.auto_choice(far_first, 1) == "mih"  # per k: nothing measured at k = 1 yet
    far_first.add(near[:1])
    assert mih.auto_choice(far_first, 10) == "mih"  # a new size: measured again


def test_method_is_checked_and_chosen_at_load(tmp_path):
    database, queries = make("clustered", 64, 3000, 20)
    with_method(database, "scan").save(tmp_path / "codes.thi")
    loaded = HammingIndex.load(tmp_path / "codes.thi", method="mih")
    assert loaded.method == "mih" and HammingIndex.load(tmp_path / "codes.thi").method == "scan"
    assert_same_knn(with_method(database, "scan"), loaded, queries, 10)
    assert loaded._mih_tables is not None
    expected = "Expected `method` to be one of ('scan', 'mih', 'auto'). Received: method='fast'"
    assert refusal(lambda: HammingIndex(64, method="fast")) == expected
    assert refusal(lambda: HammingIndex.load(tmp_path / "codes.thi", method="fast")) == expected


def test_settings_and_counters_are_read_at_each_search():
    # bench/mih.py resets `stats` between runs, and `budget` may be changed on a built index.
    database, queries = make("clustered", 64, 5000, 10)
    scan, ours = both(database, budget=EVERY)
    ours.stats, ours.budget = {"mih": 0, "scan": 0, "work": 0}, 1e-9  # every query given up on
    assert_same_knn(scan, ours, queries, 10)
    assert ours.stats["scan"] == len(queries) and ours.stats["mih"] == 0
