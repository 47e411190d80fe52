"""Tests for tfhash.index.HammingIndex."""

import json
import os
import pathlib
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from tfhash import index as index_module
from tfhash.index import MAX_BITS, HammingIndex

POPCOUNT = np.array([bin(b).count("1") for b in range(256)], np.int64)


def brute_force(database, queries):
    """Reference: all distances and the ranking by (distance, position)."""
    distances = POPCOUNT[queries[:, None, :] ^ database[None, :, :]].sum(-1)
    order = np.argsort(distances, axis=1, kind="stable")
    return np.take_along_axis(distances, order, 1), order


def tied_codes(rng, n, bits):
    """Random codes where only 4 bits per byte vary: many exact ties."""
    return rng.integers(0, 256, (n, bits // 8), dtype=np.uint8) & np.uint8(0x5A)


def build(database, ids=None, chunks=1):
    index = HammingIndex(database.shape[1] * 8)
    for part in np.array_split(np.arange(len(database)), chunks):
        index.add(database[part], None if ids is None else ids[part])
    return index


# ----------------------------------------------------------------------
# search
# ----------------------------------------------------------------------


def test_search_golden():
    # Codes 0b00000000, 0b00000001, 0b00000011, 0b00000001; query 0.
    # Distances are the popcounts 0, 1, 2, 1. Sorted: 0 (pos 0), then the tie
    # at 1 in insertion order (pos 1, then pos 3), then 2 (pos 2).
    index = HammingIndex(bits=8)
    index.add(np.array([[0b00000000], [0b00000001], [0b00000011], [0b00000001]], np.uint8))
    distances, ids = index.search(np.zeros((1, 1), np.uint8), k=4)
    assert distances.dtype == np.int32 and ids.dtype == np.int64
    np.testing.assert_array_equal(distances, [[0, 1, 1, 2]])
    np.testing.assert_array_equal(ids, [[0, 1, 3, 2]])
    # k=2 cuts inside the tie: the earlier-inserted of the two is kept.
    distances, ids = index.search(np.zeros((1, 1), np.uint8), k=2)
    np.testing.assert_array_equal(ids, [[0, 1]])


@pytest.mark.parametrize("bits,n", [(16, 20000), (64, 3000), (24, 2000)])
@pytest.mark.parametrize("with_ids", [False, True])
def test_search_matches_brute_force_with_ties(bits, n, with_ids):
    rng = np.random.default_rng(bits)
    database = tied_codes(rng, n, bits)
    queries = rng.integers(0, 256, (20, bits // 8), dtype=np.uint8)
    ids = rng.permutation(10 * n)[:n].astype(np.int64) if with_ids else None
    index = build(database, ids)
    ref_d, ref_pos = brute_force(database, queries)
    # k=37 and 500 cut inside a distance bucket; k=n takes everything.
    for k in (1, 37, 500, n):
        distances, got = index.search(queries, k)
        np.testing.assert_array_equal(distances, ref_d[:, :k])
        expected = ref_pos[:, :k] if ids is None else ids[ref_pos[:, :k]]
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("with_ids", [False, True])
def test_search_k_beyond_ntotal_returns_ntotal_columns(with_ids):
    # "The 4 nearest" of a 2-code index are its 2 codes, ranked; no padding.
    index = HammingIndex(bits=8)
    index.add(
        np.array([[0b11], [0b01]], np.uint8),
        np.array([7, 9]) if with_ids else None,
    )
    distances, ids = index.search(np.array([[0b01], [0b11]], np.uint8), k=4)
    assert distances.dtype == np.int32 and ids.dtype == np.int64
    np.testing.assert_array_equal(distances, [[0, 1], [0, 1]])
    expected = [[9, 7], [7, 9]] if with_ids else [[1, 0], [0, 1]]
    np.testing.assert_array_equal(ids, expected)


@pytest.mark.parametrize("k", [2**40, np.int64(2**62), np.uint64(2**64 - 1), 10**30])
def test_search_memory_is_bounded_by_index_not_k(k):
    # Before: faiss got k itself and allocated (nq, k) outputs: k=2**40 raised
    # MemoryError (and k=2**31 got the process OOM-killed, so is not run here).
    index = HammingIndex(bits=16)
    index.add(np.array([[0, 0], [0, 1], [0, 3]], np.uint8))
    # What bounds the memory: faiss, which allocates (nq, k) outputs, is asked for
    # the 3 codes there are, never for k. Its calls are recorded on the way through.
    asked = []
    engine = index._index

    class Recording:
        def __getattr__(self, name):
            return getattr(engine, name)

        def search(self, queries, k):
            asked.append(k)
            return engine.search(queries, k)

    index._index = Recording()
    distances, ids = index.search(np.zeros((2, 2), np.uint8), k)
    assert asked == [3]
    assert distances.shape == ids.shape == (2, 3)
    np.testing.assert_array_equal(ids, [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(distances, [[0, 1, 2], [0, 1, 2]])
    distances, ids = index.search(np.zeros((0, 2), np.uint8), k)
    assert distances.shape == ids.shape == (0, 3)


def test_search_no_queries():
    index = HammingIndex(bits=16)
    index.add(np.zeros((3, 2), np.uint8))
    distances, ids = index.search(np.zeros((0, 2), np.uint8), k=2)
    assert distances.shape == ids.shape == (0, 2)


# ----------------------------------------------------------------------
# range_search
# ----------------------------------------------------------------------


def test_range_search_golden_inclusive():
    # Same codes as test_search_golden, distances to query 0: 0, 1, 2, 1.
    # radius=1 keeps distance <= 1: positions 0 (d=0), 1 and 3 (d=1, insertion
    # order); radius=0 keeps only position 0; radius=8 keeps all four.
    index = HammingIndex(bits=8)
    index.add(np.array([[0b00000000], [0b00000001], [0b00000011], [0b00000001]], np.uint8))
    queries = np.array([[0], [0b11]], np.uint8)
    lims, distances, ids = index.range_search(queries, radius=1)
    # Query 0b11: distances 2, 1, 0, 1 -> position 2 (d=0), then 1 and 3.
    assert lims.dtype == np.int64 and distances.dtype == np.int32
    np.testing.assert_array_equal(lims, [0, 3, 6])
    np.testing.assert_array_equal(distances, [0, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(ids, [0, 1, 3, 2, 1, 3])
    lims, _, ids = index.range_search(queries[:1], radius=0)
    np.testing.assert_array_equal(ids, [0])
    lims, distances, ids = index.range_search(queries[:1], radius=8)
    np.testing.assert_array_equal(ids, [0, 1, 3, 2])


@pytest.mark.parametrize("with_ids", [False, True])
def test_range_search_matches_brute_force(with_ids):
    rng = np.random.default_rng(3)
    n, bits = 5000, 16
    database = tied_codes(rng, n, bits)
    queries = rng.integers(0, 256, (15, 2), dtype=np.uint8)
    ids = rng.permutation(n).astype(np.int64) + 100 if with_ids else None
    index = build(database, ids)
    ref_d, ref_pos = brute_force(database, queries)
    for radius in (0, 3, 5, bits):
        lims, distances, got = index.range_search(queries, radius)
        assert len(lims) == len(queries) + 1
        for q in range(len(queries)):
            keep = ref_d[q] <= radius
            np.testing.assert_array_equal(distances[lims[q] : lims[q + 1]], ref_d[q][keep])
            expected = ref_pos[q][keep] if ids is None else ids[ref_pos[q][keep]]
            np.testing.assert_array_equal(got[lims[q] : lims[q + 1]], expected)


# ----------------------------------------------------------------------
# add, memory
# ----------------------------------------------------------------------


@pytest.mark.parametrize("with_ids", [False, True])
def test_add_in_chunks_equals_add_at_once(with_ids):
    rng = np.random.default_rng(1)
    database = tied_codes(rng, 3000, 16)
    ids = rng.permutation(3000).astype(np.int64) if with_ids else None
    queries = rng.integers(0, 256, (10, 2), dtype=np.uint8)
    once, chunked = build(database, ids), build(database, ids, chunks=37)
    assert len(once) == len(chunked) == 3000
    for got, want in zip(chunked.search(queries, 200), once.search(queries, 200)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(chunked.range_search(queries, 4), once.range_search(queries, 4)):
        np.testing.assert_array_equal(got, want)


def test_code_memory_is_near_packed_size():
    database = np.full((20000, 8), 0xFF, np.uint8)
    once = build(database)
    assert once.code_bytes == database.nbytes
    chunked = build(database, chunks=200)
    assert chunked.code_bytes <= 1.1 * database.nbytes
    assert chunked.memory_bytes == chunked.code_bytes
    with_ids = build(database, np.arange(20000))
    assert with_ids.memory_bytes == database.nbytes + 8 * 20000


def test_spare_capacity_is_never_returned():
    # Spare rows are zero-filled, the exact match of a zero query: they must
    # stay invisible.
    index = HammingIndex(bits=16)
    index.add(np.full((1000, 2), 0xFF, np.uint8))
    index.add(np.full((1, 2), 0xFF, np.uint8))
    assert index.code_bytes > 1001 * 2  # growth left spare rows
    distances, ids = index.search(np.zeros((1, 2), np.uint8), k=1004)
    np.testing.assert_array_equal(ids, [np.arange(1001)])
    np.testing.assert_array_equal(distances, 16)
    lims, _, _ = index.range_search(np.zeros((1, 2), np.uint8), radius=16)
    assert lims[1] == 1001


# ----------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(5)
    database = tied_codes(rng, 500, 32)
    index = build(database, np.arange(500, dtype=np.int64) * 3, chunks=3)
    path = tmp_path / "index.tfhi"
    index.save(path)
    return index, path


@pytest.mark.parametrize("with_ids", [False, True])
def test_save_load_round_trip(tmp_path, with_ids):
    rng = np.random.default_rng(2)
    database = tied_codes(rng, 1000, 64)
    ids = rng.permutation(5000)[:1000].astype(np.int64) if with_ids else None
    index = build(database, ids, chunks=4)
    index.save(str(tmp_path / "a.tfhi"))
    loaded = HammingIndex.load(tmp_path / "a.tfhi")
    assert (loaded.bits, loaded.ntotal, loaded.has_ids) == (64, 1000, with_ids)
    assert loaded.code_bytes == database.nbytes  # exact, no spare rows
    queries = rng.integers(0, 256, (10, 8), dtype=np.uint8)
    for got, want in zip(loaded.search(queries, 50), index.search(queries, 50)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(loaded.range_search(queries, 20), index.range_search(queries, 20)):
        np.testing.assert_array_equal(got, want)
    # The loaded index keeps growing like the original.
    loaded.add(database[:5], None if ids is None else ids[:5] + 10**6)
    assert loaded.ntotal == 1005
    assert sorted(os.listdir(tmp_path)) == ["a.tfhi"]  # no temp files left


def test_save_load_empty_index(tmp_path):
    HammingIndex(bits=128).save(tmp_path / "empty.tfhi")
    loaded = HammingIndex.load(tmp_path / "empty.tfhi")
    assert (loaded.bits, loaded.ntotal, loaded.has_ids) == (128, 0, False)


def test_file_layout(saved):
    index, path = saved
    data = path.read_bytes()
    magic, version, bits, flags, n, header_crc = struct.unpack_from("<8sIIIQI", data)
    assert (magic, version, bits, flags, n) == (b"TFHASHIX", 1, 32, 1, 500)
    assert header_crc == zlib.crc32(data[:28])
    assert len(data) == 32 + 500 * 4 + 500 * 8 + 4
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[32:-4])


def test_failed_save_keeps_existing_file(saved, monkeypatch):
    index, path = saved
    before = path.read_bytes()
    index.add(np.zeros((1, 4), np.uint8), np.array([99999]))

    def broken_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(index_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        index.save(path)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


def test_save_interrupted_mid_write_leaves_nothing(tmp_path, monkeypatch):
    index = build(np.zeros((10, 1), np.uint8))

    def broken_chunks(self):
        yield np.zeros(3, np.uint8)
        raise KeyboardInterrupt

    monkeypatch.setattr(HammingIndex, "_payload_chunks", broken_chunks)
    with pytest.raises(KeyboardInterrupt):
        index.save(tmp_path / "new.tfhi")
    assert os.listdir(tmp_path) == []


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HammingIndex.load(tmp_path / "nope.tfhi")


@pytest.mark.parametrize("keep", [0.0, 0.2, 0.5, 0.999])
def test_load_truncated(saved, keep):
    _, path = saved
    data = path.read_bytes()
    cut = int(len(data) * keep) if keep else 5  # 5: inside the magic
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="truncated") as info:
        HammingIndex.load(path)
    if cut > 32:  # header intact: says what size was expected and found
        assert f"implies {len(data)} bytes, found {cut} bytes" in str(info.value)


def test_load_trailing_bytes(saved):
    _, path = saved
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="trailing bytes"):
        HammingIndex.load(path)


@pytest.mark.parametrize("where", ["codes", "ids", "trailer"])
def test_load_flipped_payload_byte(saved, where):
    _, path = saved
    data = bytearray(path.read_bytes())
    position = {"codes": 32 + 777, "ids": 32 + 2000 + 13, "trailer": len(data) - 1}
    data[position[where]] ^= 0x10
    path.write_bytes(bytes(data))
    match = r"corrupted: checksum .* expected 0x[0-9a-f]{8} as stored, found 0x"
    with pytest.raises(ValueError, match=match):
        HammingIndex.load(path)


def test_load_flipped_header_byte(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[16] ^= 0x01  # lowest byte of n
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted: header checksum"):
        HammingIndex.load(path)


@pytest.mark.parametrize(
    "content",
    [
        b"\x89PNG\r\n\x1a\n" + b"\0" * 100,
        bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)),
        b"TFHASX",  # shorter than the magic, but not a prefix of it
    ],
)
def test_load_foreign_file(tmp_path, content):
    path = tmp_path / "foreign.bin"
    path.write_bytes(content)
    match = "is not a HammingIndex file: expected it to start with magic b'TFHASHIX', found"
    with pytest.raises(ValueError, match=match) as info:
        HammingIndex.load(path)
    assert repr(content[:8]) in str(info.value)


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty: expected it to start with magic"):
        HammingIndex.load(path)


def test_load_newer_version(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[8:12] = struct.pack("<I", 3)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="format version 3 .*newer.*reads version 2"):
        HammingIndex.load(path)


def write_header(path, bits, n, flags=0, payload=b""):
    """A file whose header checksum is valid, whatever its fields say."""
    header = struct.pack("<8sIIIQ", b"TFHASHIX", 1, bits, flags, n)
    header += struct.pack("<I", zlib.crc32(header))
    path.write_bytes(header + payload + struct.pack("<I", zlib.crc32(payload)))


@pytest.fixture
def no_allocation(monkeypatch):
    """Fails the test if load gets as far as allocating the code buffer."""

    def refuse(bits, capacity):
        raise AssertionError(f"allocated: bits={bits}, capacity={capacity}")

    monkeypatch.setattr(HammingIndex, "_new_engine_for", staticmethod(refuse))


@pytest.mark.parametrize("bits", [2**31, 2**32 - 8, MAX_BITS + 8, 12, 0])
def test_load_header_bits_out_of_bounds(tmp_path, no_allocation, bits):
    # Before: bits=2**31 with n=0 loaded "fine" (a 36-byte file), handing
    # faiss a 2**31-bit index.
    path = tmp_path / "bad.tfhi"
    write_header(path, bits, n=0)
    match = re.escape(
        f"HammingIndex file {str(path)!r} has an invalid header: expected bits "
        f"a multiple of 8 in [8, 4096], found bits={bits}."
    )
    with pytest.raises(ValueError, match=f"^{match}$"):
        HammingIndex.load(path)


@pytest.mark.parametrize("n", [1, 2**40, 2**64 - 1])
@pytest.mark.parametrize("flags", [0, 1])
def test_load_header_count_beyond_file_size(tmp_path, no_allocation, n, flags):
    # An absurd n is refused from the file size alone, before allocating.
    path = tmp_path / "bad.tfhi"
    write_header(path, 64, n=n, flags=flags)
    expected = 32 + n * 8 + (8 * n if flags else 0) + 4
    match = re.escape(
        f"HammingIndex file {str(path)!r} is truncated: its header (bits=64, "
        f"n={n}, has_ids={bool(flags)}) implies {expected} bytes, found 36 bytes."
    )
    with pytest.raises(ValueError, match=f"^{match}$"):
        HammingIndex.load(path)


def test_load_header_unknown_flags(tmp_path, no_allocation):
    path = tmp_path / "bad.tfhi"
    write_header(path, 8, n=0, flags=2)
    with pytest.raises(ValueError, match="invalid header: expected flags in \\[0, 1\\] for format version 1, found flags=2.$"):
        HammingIndex.load(path)


def test_max_bits_round_trip(tmp_path):
    # The bound on load is the constructor's: every index that can be built loads.
    index = HammingIndex(bits=MAX_BITS)
    index.add(np.full((2, MAX_BITS // 8), 0xA5, np.uint8))
    index.save(tmp_path / "max.tfhi")
    loaded = HammingIndex.load(tmp_path / "max.tfhi")
    assert (loaded.bits, loaded.ntotal) == (MAX_BITS, 2)


def dead_pid():
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


@pytest.mark.skipif(os.name != "posix", reason="stale temporaries are detected with POSIX kill(pid, 0)")
def test_save_removes_stale_temporaries_of_dead_writers(tmp_path, monkeypatch):
    # What six killed saves left behind: temporaries nobody would remove.
    pid = dead_pid()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    stale = [f".index.tfhi.{pid}-{'%08x' % i}.partial" for i in (1, 2)]
    keep = [
        f".index.tfhi.{os.getppid()}-0000000a.partial",  # live writer: still saving
        f".index.tfhi.{os.getpid()}-0000000b.partial",  # a save in another thread
        f".other.tfhi.{pid}-0000000c.partial",  # another file's temporary
        f".index.tfhi.{pid}-0000000d.tmp",  # not a name tfhash writes
        "index.tfhi.bak",
    ]
    for name in stale + keep:
        (tmp_path / name).write_bytes(b"x" * 100)

    written = []
    real_replace = os.replace

    def recording_replace(src, dst):
        written.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(index_module.os, "replace", recording_replace)
    build(np.zeros((4, 1), np.uint8)).save(tmp_path / "index.tfhi")
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ["index.tfhi"])
    # The save's own temporary carries its pid, so a later save can tell (tfhash.io's naming).
    assert re.fullmatch(rf"\.index\.tfhi\.{os.getpid()}-[0-9a-f]{{8}}\.partial", written[0])
    assert HammingIndex.load(tmp_path / "index.tfhi").ntotal == 4


# ----------------------------------------------------------------------
# input checks: every rejected call leaves the index unchanged
# ----------------------------------------------------------------------


@pytest.mark.parametrize("bits", [12, 0, -8, 7.9, "64", True, None, MAX_BITS + 8, 2**31])
def test_bad_bits(bits):
    match = f"Expected `bits` to be a positive multiple of 8, at most 4096. Received: bits={bits!r}$"
    with pytest.raises(ValueError, match=match):
        HammingIndex(bits)


@pytest.fixture
def small():
    rng = np.random.default_rng(9)
    database = tied_codes(rng, 50, 16)
    index = build(database)
    queries = rng.integers(0, 256, (4, 2), dtype=np.uint8)
    return index, queries, index.search(queries, 10)


def assert_unchanged(index, queries, results):
    assert index.ntotal == 50
    for got, want in zip(index.search(queries, 10), results):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "codes,match",
    [
        (
            np.zeros((3, 2), np.int64),
            "no conversion is done. Received: dtype=int64, shape=\\(3, 2\\)",
        ),
        (np.zeros((3, 2), np.float32), "Received: dtype=float32"),
        (np.zeros((3, 2), bool), "Received: dtype=bool"),
        ([[0, 1], [1, 0]], "Received: dtype=int64"),
        (np.zeros(2, np.uint8), "2-D .*Received: dtype=uint8, shape=\\(2,\\)"),
        (np.zeros((1, 3, 2), np.uint8), "2-D .*shape=\\(1, 3, 2\\)"),
        (np.zeros((3, 4), np.uint8), "width 2 bytes, received width 4"),
        (np.zeros((3, 1), np.uint8), "width 2 bytes, received width 1"),
    ],
)
def test_bad_codes_rejected_unchanged(small, codes, match):
    index, queries, results = small
    with pytest.raises(ValueError, match=match):
        index.add(codes)
    with pytest.raises(ValueError, match=match.replace("`codes`", "`queries`")):
        index.search(codes, 3)
    assert_unchanged(index, queries, results)


def test_bad_ids_rejected_unchanged(small):
    index, queries, results = small
    codes = np.zeros((3, 2), np.uint8)
    # Built without ids: cannot switch to ids.
    with pytest.raises(ValueError, match="Expected no `ids`: this index was built without ids"):
        index.add(codes, np.arange(3))
    assert_unchanged(index, queries, results)

    with_ids = HammingIndex(bits=16)
    with_ids.add(codes, np.array([5, 6, 7]))
    before = with_ids.search(queries, 3)
    bad = [
        (None, "Expected `ids` in every add\\(\\).*Received: ids=None"),
        (np.arange(2), "length 3 .*Received: dtype=int64, shape=\\(2,\\)"),
        (np.arange(4), "length 3 .*shape=\\(4,\\)"),
        (np.zeros((3, 1), np.int64), "1-D .*shape=\\(3, 1\\)"),
        (np.array([1.0, 2.0, 3.0]), "integer array .*dtype=float64"),
        (np.array([1, -1, 2]), "in \\[0, 2\\*\\*63 - 1\\] .*min=-1"),
        (np.array([1, 2**64 - 1, 2], np.uint64), "max=18446744073709551615"),
    ]
    for ids, match in bad:
        with pytest.raises(ValueError, match=match):
            with_ids.add(codes, ids)
        assert with_ids.ntotal == 3
        for got, want in zip(with_ids.search(queries, 3), before):
            np.testing.assert_array_equal(got, want)
    # The first add decides: an index started with ids accepts int32 ids too.
    with_ids.add(codes, np.array([1, 2, 3], np.int32))
    assert with_ids.ntotal == 6


@pytest.mark.parametrize("k", [0, -1, -(2**40), 1.5, True, "3", None, np.int64(-3)])
def test_bad_k(small, k):
    index, queries, results = small
    match = re.escape(f"Expected `k` to be a positive int. Received: k={k!r}")
    with pytest.raises(ValueError, match=f"^{match}$"):
        index.search(queries, k)
    assert_unchanged(index, queries, results)


def test_numpy_int_k_and_radius(small):
    index, queries, results = small
    distances, _ = index.search(queries, np.int64(10))
    np.testing.assert_array_equal(distances, results[0])
    # A NumPy radius gives what the same int gives, and what brute force gives:
    # every code within distance 4, by distance then insertion order (here 0, 5,
    # 17 and 0 codes for the 4 queries: empty rows and ties both occur).
    lims, distances, ids = index.range_search(queries, np.int32(4))
    for got, want in zip((lims, distances, ids), index.range_search(queries, 4)):
        np.testing.assert_array_equal(got, want)
    database = tied_codes(np.random.default_rng(9), 50, 16)  # the fixture's codes, drawn alike
    ref_d, ref_pos = brute_force(database, queries)
    np.testing.assert_array_equal(ref_d[:, :10], results[0])
    within = ref_d <= 4
    np.testing.assert_array_equal(lims, np.r_[0, np.cumsum(within.sum(1))])
    np.testing.assert_array_equal(distances, ref_d[within])
    np.testing.assert_array_equal(ids, ref_pos[within])


@pytest.mark.parametrize("radius", [-1, 17, 2.0, False, None])
def test_bad_radius(small, radius):
    index, queries, _ = small
    with pytest.raises(ValueError, match=f"int in \\[0, bits=16\\]. Received: radius={radius!r}"):
        index.range_search(queries, radius)


def test_empty_index_search_raises():
    # Documented choice: an empty index is an error, not a 0-column answer,
    # whatever k (a huge k must not allocate either).
    index = HammingIndex(bits=16)
    for k in (1, 2**40):
        with pytest.raises(ValueError, match="Cannot search an empty HammingIndex"):
            index.search(np.zeros((1, 2), np.uint8), k)
    with pytest.raises(ValueError, match="Cannot range_search an empty HammingIndex"):
        index.range_search(np.zeros((1, 2), np.uint8), 1)
    index.add(np.zeros((0, 2), np.uint8))  # adding nothing is allowed
    assert len(index) == 0


def test_repr_and_sizes():
    index = HammingIndex(bits=64)
    index.add(np.zeros((3, 8), np.uint8))
    assert (index.bits, index.code_size, index.ntotal, len(index)) == (64, 8, 3, 3)
    assert repr(index) == "HammingIndex(bits=64, ntotal=3, has_ids=False)"


def test_path_like_save(tmp_path):
    index = build(np.arange(8, dtype=np.uint8)[:, None])
    index.save(pathlib.PurePath(tmp_path / "p.tfhi"))
    assert HammingIndex.load(str(tmp_path / "p.tfhi")).ntotal == 8


# ----------------------------------------------------------------------
# command line: `tfhash search`
# ----------------------------------------------------------------------


@pytest.fixture
def cli_index(tmp_path):
    index = HammingIndex(bits=16)
    index.add(np.array([[0, 0], [0, 1], [0, 3]], np.uint8))
    index.save(tmp_path / "i.tfhi")
    np.save(tmp_path / "q.npy", np.zeros((1, 2), np.uint8))
    return str(tmp_path / "i.tfhi"), str(tmp_path / "q.npy")


@pytest.mark.parametrize("k", ["-3", "0"])
@pytest.mark.parametrize("radius", [None, "0", "16"])
def test_cli_search_rejects_k_below_one(cli_index, capsys, k, radius):
    # Before: `--radius 0 -k -3` printed all but the last 3 ids.
    from tfhash.cli import main

    index, queries = cli_index
    argv = ["search", index, "--queries", queries, "-k", k]
    if radius is not None:
        argv += ["--radius", radius]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"tfhash search: error: Expected -k to be a positive int. Received: -k {k}\n"


def test_cli_search_huge_k_prints_every_code(cli_index, capsys):
    # Before: a MemoryError traceback.
    from tfhash.cli import main

    index, queries = cli_index
    assert main(["search", index, "--queries", queries, "-k", str(2**40)]) == 0
    assert capsys.readouterr().out == "query 0: ids [0, 1, 2] distances [0, 1, 2]\n"
    assert main(["search", index, "--queries", queries, "--radius", "16", "-k", "2"]) == 0
    assert capsys.readouterr().out == "query 0: 3 within radius 16, nearest 2: [0, 1]\n"


def test_metadata_round_trip_and_checksum(tmp_path):
    """Metadata (an image folder's paths) is saved after the codes and ids, in
    format version 2, inside the payload checksum; an index without metadata is
    still version 1, which older readers load."""
    index = HammingIndex(bits=8)
    index.add(np.array([[1], [2]], np.uint8))
    plain = tmp_path / "plain.thi"
    index.save(plain)
    assert struct.unpack_from("<I", plain.read_bytes(), 8) == (1,)
    index.metadata = {"paths": ["a/1.png", "b/é.jpg"], "run": "/runs/x"}
    path = tmp_path / "meta.thi"
    index.save(path)
    data = path.read_bytes()
    text = json.dumps(index.metadata, sort_keys=True).encode()
    # 32-byte header, 2 codes of 1 byte, the u64 length, the JSON, the CRC.
    assert len(data) == 32 + 2 + 8 + len(text) + 4
    assert struct.unpack_from("<II", data, 8) == (2, 8) and struct.unpack_from("<I", data, 16) == (2,)
    loaded = HammingIndex.load(path)
    assert loaded.metadata == index.metadata and loaded.search(np.array([[2]], np.uint8), 1)[1].tolist() == [[1]]
    assert HammingIndex.load(plain).metadata == {}
    damaged = bytearray(data)
    damaged[32 + 2 + 8 + 3] ^= 1  # one bit of the JSON
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="corrupted: checksum"):
        HammingIndex.load(path)
    path.write_bytes(data[:-5])
    with pytest.raises(ValueError, match="truncated"):
        HammingIndex.load(path)


def test_codes_copy_in_insertion_order():
    index = HammingIndex(bits=16)
    assert index.codes().shape == (0, 2)
    rows = np.array([[1, 2], [3, 4], [5, 6]], np.uint8)
    index.add(rows[:2])
    index.add(rows[2:])  # a second add grows the buffer: the copy is still the rows added
    codes = index.codes()
    assert codes.tolist() == rows.tolist()
    codes[0, 0] = 99  # a copy: the index keeps its codes
    assert index.codes()[0, 0] == 1
