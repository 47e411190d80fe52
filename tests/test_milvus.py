"""tfhash.milvus_index.MilvusIndex against tfhash.index.HammingIndex, on milvus-lite.

The tests share one milvus-lite database (`database`: one local server
process, started once; pymilvus keeps each file's server until the process
ends), each test its own collection in it (`where`). The reference for every
ranking is HammingIndex given the same add() calls: the two must agree on
distances and ids, ties included.
"""

import re
import sys

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

import tfhash.milvus_index as milvus_index  # noqa: E402
from one_line import refusal  # noqa: E402
from tfhash.index import HammingIndex  # noqa: E402
from tfhash.milvus_index import MilvusIndex  # noqa: E402

BITS = 64
MAX_TOPK = milvus_index.MAX_TOPK  # Milvus's own limit, before a test lowers the module's


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """The module's milvus-lite file."""
    return tmp_path_factory.mktemp("milvus") / "codes.db"


@pytest.fixture
def where(database, request):
    """(uri, collection) of this test's own collection, named after the test."""
    return database, re.sub(r"\W", "_", request.node.name)


def open_index(where, bits=BITS, **kwargs):
    uri, collection = where
    return MilvusIndex(bits, uri=uri, collection=collection, **kwargs)


def codes_with_ties(n=3000, seed=0):
    """64-bit codes, random and clustered, with many exact ties:

    * rows 0..999 random;
    * rows 1000..1999 in 20 clusters: a random center with 0-3 bits flipped;
    * rows 2000..2999 copies of 10 codes (rows 0..9), 100 copies each, shuffled
      in among one another, so each of rows 0..9 has 101 exact duplicates.
    """
    rng = np.random.default_rng(seed)
    random = rng.integers(0, 256, (1000, BITS // 8), dtype=np.uint8)
    centers = rng.integers(0, 256, (20, BITS // 8), dtype=np.uint8)
    bits = np.unpackbits(centers[rng.integers(0, 20, 1000)], axis=1)
    for row in bits:
        row[rng.choice(BITS, rng.integers(0, 4), replace=False)] ^= 1
    copies = random[rng.permutation(np.repeat(np.arange(10), 100))]
    return np.concatenate([random, np.packbits(bits, axis=1), copies])[:n]


def queries_for(codes, seed=1):
    """Rows that have duplicates (rows 0..4), cluster members, and random codes."""
    rng = np.random.default_rng(seed)
    return np.concatenate([codes[:5], codes[1000:1005], rng.integers(0, 256, (10, BITS // 8), dtype=np.uint8)])


def assert_same(milvus, reference, queries, ks=(1, 10, 150, 1000)):
    for k in ks:
        distances, ids = milvus.search(queries, k)
        expected_distances, expected_ids = reference.search(queries, k)
        assert distances.dtype == np.int32 and ids.dtype == np.int64
        np.testing.assert_array_equal(distances, expected_distances, err_msg=f"k={k}")
        np.testing.assert_array_equal(ids, expected_ids, err_msg=f"k={k}")
    for radius in (0, 3, 20):
        for got, expected in zip(milvus.range_search(queries, radius), reference.range_search(queries, radius)):
            assert got.dtype == expected.dtype
            np.testing.assert_array_equal(got, expected, err_msg=f"radius={radius}")


def adversarial_ties(index):
    """Makes `index` see Milvus answers whose ties come in the worst order:
    highest insertion position first, then cut at the limit, as a server whose
    segments answer in another order may cut them. Exact ranking must not
    depend on Milvus's tie order, so the results still equal HammingIndex's."""
    search = index._search

    def worst_order(queries, limit, **kwargs):
        found = []
        # Every candidate (the tests' indexes hold < MAX_TOPK rows), worst order, then cut.
        for distances, positions, ids in search(queries, MAX_TOPK, **kwargs):
            order = np.lexsort((-positions, distances))[:limit]
            found.append((distances[order], positions[order], ids[order]))
        return found

    index._search = worst_order


# ----------------------------------------------------------------------
# Ranking: equal to HammingIndex
# ----------------------------------------------------------------------


def test_search_equals_hamming_index_without_ids(where):
    codes = codes_with_ties()
    reference = HammingIndex(BITS)
    with open_index(where, batch_size=700) as index:  # several insert calls per add
        for part in (codes[:1200], codes[1200:]):
            index.add(part)
            reference.add(part)
        assert index.ntotal == len(index) == 3000 and not index.has_ids
        queries = queries_for(codes)
        assert_same(index, reference, queries)
        # By construction row 0 is at positions 0 and at the 100 positions of
        # 2000..2999 where its copies landed; its 60 nearest are 60 of those 101
        # rows at distance 0, the first 60 in insertion order.
        copies_of_0 = np.flatnonzero((codes == codes[0]).all(axis=1))
        assert len(copies_of_0) == 101 and copies_of_0[0] == 0
        distances, ids = index.search(codes[:1], 60)
        assert distances.tolist() == [[0] * 60]
        assert ids.tolist() == [copies_of_0[:60].tolist()]


def test_search_equals_hamming_index_with_ids(where):
    codes = codes_with_ties()
    # Ids run backwards, so insertion order and id order disagree on every tie.
    ids = np.arange(10_000, 10_000 - len(codes), -1, dtype=np.int64)
    reference = HammingIndex(BITS)
    with open_index(where) as index:
        for part in (slice(0, 2500), slice(2500, None)):
            index.add(codes[part], ids=ids[part])
            reference.add(codes[part], ids=ids[part])
        assert index.has_ids
        assert_same(index, reference, queries_for(codes))
        # Row 3's 101 copies, at distance 0, come in insertion order: their ids descending.
        copies_of_3 = np.flatnonzero((codes == codes[3]).all(axis=1))
        _, found = index.search(codes[3:4], 101)
        assert found.tolist() == [ids[copies_of_3].tolist()] == [sorted(ids[copies_of_3], reverse=True)]


@pytest.mark.parametrize("max_topk, margin", [(MAX_TOPK, 0), (64, milvus_index._TIE_MARGIN)])
def test_ties_do_not_depend_on_milvus_order(where, monkeypatch, max_topk, margin):
    """Ties come in reversed order and are cut at the limit (adversarial_ties).
    Margin 0: Milvus is asked for 2k rows, fewer than the 101 copies of a code,
    and one range search at the k-th distance brings the rest. Top-k 64: even
    that answer is cut, and the ties are fetched in windows of positions."""
    codes = codes_with_ties(n=2300)
    reference = HammingIndex(BITS)
    reference.add(codes)
    monkeypatch.setattr(milvus_index, "MAX_TOPK", max_topk)
    monkeypatch.setattr(milvus_index, "_TIE_MARGIN", margin)
    with open_index(where) as index:
        index.add(codes)
        adversarial_ties(index)
        assert_same(index, reference, queries_for(codes), ks=(1, 10, 40, 64))


# ----------------------------------------------------------------------
# k, deletes, codes, reopening
# ----------------------------------------------------------------------


def test_k_past_ntotal_as_hamming_index(where, monkeypatch):
    codes = codes_with_ties()[2000:2150]  # 150 rows: copies of 10 codes, many ties
    reference = HammingIndex(BITS)
    reference.add(codes)
    with open_index(where) as index:
        index.add(codes)
        for k in (150, 151, 2**40):
            distances, ids = index.search(codes[:7], k)
            assert distances.shape == ids.shape == (7, 150)  # min(k, ntotal) columns, no padding
            np.testing.assert_array_equal(ids, reference.search(codes[:7], k)[1])
        assert [a.shape for a in index.search(codes[:0], 5)] == [(0, 5), (0, 5)]
        # Past Milvus's top-k limit (here 64 rows per query): refused, in one line.
        monkeypatch.setattr(milvus_index, "MAX_TOPK", 64)
        with pytest.raises(ValueError, match=r"^Expected `k` <= 64: Milvus returns at most 64 rows .* k=65$"):
            index.search(codes[:1], 65)


def test_remove(where):
    codes = codes_with_ties(n=2200)
    with open_index(where) as index:
        index.add(codes)
        removed = np.arange(0, 2200, 3)  # every third position, copies of row 0..9 among them
        assert index.remove(np.concatenate([removed, removed[:5], [99_999]])) == len(removed)  # repeats, unknown id
        assert index.ntotal == 2200 - len(removed)
        # Positions are not renumbered: the survivors keep their ids, new rows continue at 2200.
        kept = np.setdiff1d(np.arange(2200), removed)
        index.add(codes[:3])
        reference = HammingIndex(BITS)
        reference.add(np.concatenate([codes[kept], codes[:3]]), ids=np.concatenate([kept, [2200, 2201, 2202]]))
        assert_same(index, reference, queries_for(codes), ks=(1, 10, 200))
        assert index.remove(np.array([], np.int64)) == 0


def test_remove_by_custom_ids(where):
    codes = codes_with_ties(n=2100)
    ids = np.arange(len(codes)) % 700 + 5  # each id on 3 rows: remove() takes them all
    with open_index(where) as index:
        index.add(codes, ids=ids)
        assert index.remove(np.array([5, 6, 704])) == 9
        keep = ~np.isin(ids, [5, 6, 704])
        reference = HammingIndex(BITS)
        reference.add(codes[keep], ids=ids[keep])
        assert_same(index, reference, queries_for(codes), ks=(1, 25))


def test_codes_and_reopen(where):
    codes = codes_with_ties(n=2050)
    with open_index(where, batch_size=1000) as index:
        index.add(codes[:1000], ids=np.arange(1000) * 2)
        index.add(codes[1000:], ids=np.arange(1000, 2050) * 2)
        index.remove(np.array([2 * 2049]))  # a delete, kept across reopening
    with open_index(where) as index:  # reopened: rows, ids, positions kept
        assert (index.ntotal, index.has_ids, index.index_type) == (2049, True, "BIN_FLAT")
        np.testing.assert_array_equal(index.codes(), codes[:2049])
        reference = HammingIndex(BITS)
        reference.add(codes[:2049], ids=np.arange(2049) * 2)
        assert_same(index, reference, queries_for(codes), ks=(10,))
        with pytest.raises(ValueError, match=r"^Expected `ids` in every add\(\)"):
            index.add(codes[:1])
    with open_index(where, bits=None) as index:  # bits read from the collection
        assert (index.bits, index.code_size, index.ntotal) == (64, 8, 2049)
    uri, collection = where
    other = f"{collection}_other"
    assert refusal(lambda: MilvusIndex(None, uri=uri, collection=other)) == (
        f"Expected `bits` to create collection '{other}' at '{uri}'. Received: bits=None")
    with pytest.raises(ValueError) as error:
        open_index(where, bits=32)
    assert str(error.value) == (f"Expected collection '{collection}' at '{uri}' to hold 32-bit codes "
                                "(BINARY_VECTOR dim=32). Received: dim=64")


def test_paths_and_metadata_kept_with_the_collection(where):
    """paths=True: each row keeps a file path (tfhash.image_search's collections); metadata is the
    collection's description, read back when reopened. The codes and ranking are unchanged."""
    codes = codes_with_ties(n=300)
    paths = [f"folder/{i:04d}.png" for i in range(300)]
    metadata = {"root": "/photos", "image_size": [28, 28], "files": 300}
    with open_index(where, paths=True, metadata=metadata, batch_size=128) as index:
        assert index.has_paths and index.metadata == metadata
        index.add(codes[:200], paths=paths[:200])
        assert refusal(lambda: index.add(codes[200:], paths=paths[200:299])) == (
            f"Expected `paths`, one str per row (100), for collection '{where[1]}' (made with paths). "
            "Received: list of length 99")
        assert refusal(lambda: index.add(codes[200:])).endswith("Received: none")
        index.add(codes[200:], paths=paths[200:])
    with open_index(where, bits=None) as index:  # reopened: paths=False is a creation option only
        assert (index.has_paths, index.metadata, index.ntotal, index.next_position) == (True, metadata, 300, 300)
        assert index.paths([299, 0, 5, 0, 300]) == [paths[299], paths[0], paths[5], paths[0], None]
        reference = HammingIndex(BITS)
        reference.add(codes)
        assert_same(index, reference, queries_for(codes), ks=(1, 10))
    uri, collection = where
    with MilvusIndex(BITS, uri=uri, collection=f"{collection}_plain") as plain:  # made without: {} and no paths
        assert (plain.has_paths, plain.metadata) == (False, {})
        assert refusal(lambda: plain.add(codes[:1], paths=paths[:1])).startswith("Expected no `paths` for collection")
        assert refusal(lambda: plain.paths([0])).startswith("Expected a collection with paths")
    assert refusal(lambda: MilvusIndex(BITS, uri=uri, metadata={"x": object()})).startswith(
        "Expected `metadata` to be a dict of JSON values. Received: Object of type object")


# ----------------------------------------------------------------------
# Refusals: HammingIndex's, word for word, in one line
# ----------------------------------------------------------------------


def test_bad_input_refused_as_hamming_index_refuses(where):
    good = codes_with_ties(n=20)
    calls = {
        "float codes": lambda index: index.add(good.astype(np.float32)),
        "1-D codes": lambda index: index.add(good[0]),
        "wrong width": lambda index: index.add(good[:, :4]),
        "ids of another length": lambda index: index.add(good, ids=np.arange(19)),
        "float ids": lambda index: index.add(good, ids=np.arange(20.0)),
        "negative ids": lambda index: index.add(good, ids=np.arange(-1, 19)),
        "search an empty index": lambda index: index.search(good, 1),
        "range search an empty index": lambda index: index.range_search(good, 1),
    }
    reference = HammingIndex(BITS)
    with open_index(where) as index:
        for name, call in calls.items():
            expected = refusal(lambda: call(reference)).replace("HammingIndex", "MilvusIndex")
            assert refusal(lambda: call(index)) == expected, name
        assert index.ntotal == 0  # nothing was inserted by a refused add
        index.add(good)
        reference.add(good)
        more = {
            "ids on an index without ids": lambda index: index.add(good, ids=np.arange(20)),
            "k=0": lambda index: index.search(good, 0),
            "k=1.5": lambda index: index.search(good, 1.5),
            "queries of another width": lambda index: index.search(good[:, :7], 1),
            "radius past bits": lambda index: index.range_search(good, BITS + 1),
        }
        for name, call in more.items():
            assert refusal(lambda: call(index)) == refusal(lambda: call(reference)), name
        # remove() (HammingIndex has none) checks its ids with the same helper, tfhash.index.check_ids.
        assert refusal(lambda: index.remove(np.zeros((2, 2), np.int64))) == (
            "Expected `ids` to be a 1-D integer array of length 4 (one per row). Received: dtype=int64, shape=(2, 2)")
        assert refusal(lambda: index.remove(np.array([3, -1]))).startswith("Expected `ids` in [0, 2**63 - 1]")
        assert index.ntotal == 20


def test_bad_settings_refused(tmp_path):
    """Refused before any server is started."""
    assert refusal(lambda: MilvusIndex(12, uri=tmp_path / "a.db")) == (
        "Expected `bits` to be a positive multiple of 8, at most 4096. Received: bits=12")
    assert refusal(lambda: MilvusIndex(BITS, uri=tmp_path / "a.sqlite")).startswith(
        "Expected `uri` to be a file path ending in .db (milvus-lite) or a server address (http://host:19530)")
    assert "needs a Milvus server" in refusal(lambda: MilvusIndex(BITS, uri=tmp_path / "a.db",
                                                                  index_type="BIN_IVF_FLAT"))
    assert refusal(lambda: MilvusIndex(BITS, uri=tmp_path / "a.db", collection="no-dash")).endswith(
        "Received: 'no-dash'")


def test_missing_pymilvus_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # `import pymilvus` fails
    with pytest.raises(ImportError) as error:
        MilvusIndex(BITS, uri=tmp_path / "a.db")
    assert str(error.value) == ('MilvusIndex needs pymilvus and milvus-lite (missing: pymilvus): '
                                'pip install "tfhash[milvus]"')


def test_addresses(where):
    """The command line's addresses (tfhash.milvus_index.parse_address)."""
    parse = milvus_index.parse_address
    assert parse("milvus://db.example:19530/photos") == ("http://db.example:19530", "photos")
    assert parse("milvus://localhost:19530") == ("http://localhost:19530", "tfhash_codes")
    assert parse("milvus:runs/codes.db#photos") == ("runs/codes.db", "photos")
    assert parse("milvus:codes.db") == ("codes.db", "tfhash_codes")
    assert parse("runs/db.thi") is None  # a HammingIndex file
    assert refusal(lambda: parse("milvus:codes.thi")).startswith("Expected a milvus-lite address milvus:FILE.db")
    uri, collection = where
    address = f"milvus:{uri}#{collection}"
    assert refusal(lambda: MilvusIndex.open(address, BITS, create=False)) == (
        f"Expected a collection '{collection}' at '{uri}' (create=False). Received: none there")
    with MilvusIndex.open(address, BITS) as index:
        assert (index.uri, index.collection) == (str(uri), collection)


def test_a_retriever_over_milvus_answers_as_one_over_a_hamming_index(where, tmp_path):
    import tfhash

    codes = codes_with_ties(600)
    ids, metadata = np.arange(600)[::-1] * 10, [{"row": i} for i in range(600)]
    over_milvus = tfhash.Retriever(index=open_index(where))
    in_memory = tfhash.Retriever(bits=BITS)
    for retriever in (over_milvus, in_memory):
        retriever.add_codes(codes, ids=ids, metadata=metadata)
    queries = queries_for(codes)
    for got, expected in ((over_milvus.search_codes(queries, k=30), in_memory.search_codes(queries, k=30)),
                          (over_milvus.search_codes(queries, radius=3), in_memory.search_codes(queries, radius=3))):
        for got_row, expected_row in zip(got.distances, expected.distances, strict=True):  # radius: ragged rows
            np.testing.assert_array_equal(got_row, expected_row)
        for got_row, expected_row in zip(got.ids, expected.ids, strict=True):
            np.testing.assert_array_equal(got_row, expected_row)
        assert got.metadata == expected.metadata
    with pytest.raises(ValueError, match=r"Expected a Retriever over a HammingIndex to save: .*Received: MilvusIndex"):
        over_milvus.save(tmp_path / "folder")
    assert not (tmp_path / "folder").exists()
    with pytest.raises(ValueError, match=r"Expected `index` to be an empty index without ids"):
        tfhash.Retriever(index=over_milvus.index)  # it holds 600 codes now
