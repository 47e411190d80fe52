"""Exact Hamming k-NN over packed binary codes, with faiss as the engine.

* **Codes** are packed ``uint8`` arrays of shape ``(n, bits / 8)``, bit order as
  ``np.packbits`` (most significant bit first). Nothing is converted silently:
  any other dtype or shape raises ``ValueError``.
* **Ranking** is by Hamming distance ascending, ties broken by insertion order,
  so every result is deterministic. A k-NN result has `min(k, ntotal)`
  columns, so its memory is bounded by the index, never by `k`.
* **Files** use a small versioned binary format (no pickle), written
  atomically and checked on load; see :meth:`HammingIndex.save`.
"""

import json
import os
import struct
import zlib

import faiss
import numpy as np

from tfhash.checks import is_int as _is_int
from tfhash.io import recover, write_atomically

# Longest code accepted, by the constructor and in a file header alike (so
# every saved index loads). Learned hash codes are 16 to a few hundred bits;
# the bound stops a corrupt header (bits=2**31) from reaching faiss.
MAX_BITS = 4096

# File layout, all integers little-endian:
#   magic (8s) | version (u32) | bits (u32) | flags (u32) | n (u64) |
#   header crc32 of the 28 bytes before it (u32)            -> 32 bytes
#   codes: n * bits/8 bytes | ids: n int64 (if FLAG_IDS) |
#   metadata: length (u64) + UTF-8 JSON (if FLAG_METADATA)    -> payload
#   crc32 of the payload (u32)                                -> 4 bytes
# Magic and version come first and never move, so any later version can be
# recognized (and refused) before the rest of its header is parsed. Version 2
# adds FLAG_METADATA; an index without metadata is still written as version 1,
# so older readers load it.
MAGIC = b"TFHASHIX"
FORMAT_VERSION = 2
FLAG_IDS = 1
FLAG_METADATA = 2
_LENGTH = struct.Struct("<Q")
_PREAMBLE = struct.Struct("<8sI")
_HEADER = struct.Struct("<8sIIIQ")
_HEADER_SIZE = _HEADER.size + 4
_CRC = struct.Struct("<I")
# Bytes hashed and written per step, so saving never copies the whole index.
_IO_CHUNK = 1 << 24

# Queries per faiss pass over the database (faiss default: 32). Each pass
# opens one OpenMP parallel region per 65536 database rows; on a busy machine
# every region can stall on a descheduled thread, so fewer, larger passes are
# several times faster there and no slower on an idle one. The exact heap
# works in the output arrays, so this costs no memory.
_QUERY_BATCH = 4096

# Search methods: "scan" (faiss, brute force), "mih" (tfhash.mih, multi-index
# hashing: exact, sub-linear on clustered codes) and "auto" (k-NN by MIH where
# it is measured to pay, tfhash.mih.auto_knn; the scan otherwise).
METHODS = ("scan", "mih", "auto")

# Spare rows kept when growing: capacity <= needed * (1 + 1/16), so codes never
# take more than ~1.06x their packed size, while adding in many chunks costs
# O(16) copies per code instead of O(chunks).
_GROWTH_DIVISOR = 16


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"Expected `method` to be one of {METHODS}. Received: method={method!r}")
    return method


def check_ids(ids, n, *, size, has_ids, holder):
    """`ids` for `n` added rows as int64, or None (ids are insertion
    positions), checked against what the `holder` ("index", "Retriever") of
    `size` rows was given before: ids in every add() or in none."""
    if ids is None:
        if has_ids:
            raise ValueError(f"Expected `ids` in every add(): this {holder} was given ids before. Received: ids=None")
        return None
    if size and not has_ids:
        raise ValueError(f"Expected no `ids`: this {holder} was built without ids (its rows' positions are their "
                         f"ids). Received: ids with shape {np.shape(ids)}")
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu" or ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(f"Expected `ids` to be a 1-D integer array of length {n} (one per row). "
                         f"Received: dtype={ids.dtype}, shape={ids.shape}")
    if n and (ids.min() < 0 or ids.max() > np.iinfo(np.int64).max):
        raise ValueError("Expected `ids` in [0, 2**63 - 1] (negative ids are reserved). "
                         f"Received: min={ids.min()}, max={ids.max()}")
    return ids.astype(np.int64)


class HammingIndex:
    """Exact k-nearest-neighbor search in Hamming space over packed codes.

    Stores packed binary codes once, inside a `faiss.IndexBinaryFlat`, and
    answers exact k-NN and range queries by brute force. Results are
    deterministic: ranked by Hamming distance, ties broken by insertion order
    (faiss's exact top-k heap breaks distance ties by database index, which
    the tests check against a brute-force reference).

    The API follows faiss: `add(codes)`, `search(queries, k) -> (distances,
    ids)`, `range_search(queries, radius) -> (lims, distances, ids)`.
    Unlike faiss, inputs are checked strictly (dtype `uint8`, shape
    `(n, bits / 8)`), and a rejected call leaves the index unchanged.

    Memory: codes are held once, in faiss's buffer. Adding in several calls
    keeps at most 1/16 spare rows (`code_bytes <= 1.0625 * ntotal *
    code_size`); while the buffer grows, old and new buffers briefly coexist.
    Searches may run concurrently with each other, not with `add`.

    Args:
        bits: code length in bits, a positive multiple of 8, at most
            `MAX_BITS` (4096).
        method: how `search` (and, for `"mih"`, `range_search`) runs:
            `"scan"` (default), `"mih"` (multi-index hashing, `tfhash.mih`:
            same results, sub-linear on clustered codes, substring tables of
            2 to 3 times the packed codes built by the first search after an
            `add`) or `"auto"` (k-NN by MIH where it pays: tried where the
            index's own codes look clustered, `tfhash.mih.choose`, then kept
            while its work measured on the queries asked costs at most half
            a scan; `tfhash.mih.auto_knn`). A choice of this process, not of
            the file: not saved; `load(path, method=...)` sets it.

    Attributes:
        bits: code length in bits.
        code_size: bytes per packed code, `bits // 8`.
        method: `"scan"`, `"mih"` or `"auto"` (see Args).
        ntotal: number of codes held (also `len(index)`).
        has_ids: whether codes were added with custom `ids`.
        metadata: a JSON-able dict saved with the codes (`tfhash encode
            --images` keeps each row's file path and the encoder's run there).

    Examples:

    >>> index = HammingIndex(bits=8)
    >>> index.add(np.array([[0b00000000], [0b00000001],
    ...                     [0b00000011], [0b00000001]], dtype=np.uint8))
    >>> distances, ids = index.search(np.zeros((1, 1), np.uint8), k=4)
    >>> distances.tolist(), ids.tolist()
    ([[0, 1, 1, 2]], [[0, 1, 3, 2]])
    >>> lims, distances, ids = index.range_search(np.zeros((1, 1), np.uint8), 1)
    >>> ids[lims[0]:lims[1]].tolist()
    [0, 1, 3]
    """

    def __init__(self, bits, method="scan"):
        if not _is_int(bits) or not 0 < bits <= MAX_BITS or bits % 8:
            raise ValueError(
                f"Expected `bits` to be a positive multiple of 8, at most "
                f"{MAX_BITS}. Received: bits={bits!r}"
            )
        self.method = _check_method(method)
        # tfhash.mih's substring tables (method "mih" or "auto"), built by a
        # search and dropped by add().
        self._mih_tables = None
        self.bits = int(bits)
        self.code_size = self.bits // 8
        self._index = self._new_engine(0)
        # Only allocated when ids are given: position -> user id. Same
        # capacity as the engine's code buffer.
        self._ids = None
        # What the codes are of, saved with them (JSON-able dict): e.g. an
        # image folder's paths, row by row, and the encoder that made them.
        self.metadata = {}

    # ------------------------------------------------------------------
    # Size and memory
    # ------------------------------------------------------------------

    @property
    def ntotal(self):
        return int(self._index.ntotal)

    def __len__(self):
        return self.ntotal

    @property
    def has_ids(self):
        return self._ids is not None

    @property
    def code_bytes(self):
        """Bytes allocated for codes (inside faiss), spare capacity included."""
        return int(self._index.xb.size())

    @property
    def memory_bytes(self):
        """Bytes allocated for codes plus custom ids, if any, plus the
        multi-index hashing tables, if built."""
        ids_bytes = 0 if self._ids is None else self._ids.nbytes
        tables_bytes = 0 if self._mih_tables is None else self._mih_tables.nbytes
        return self.code_bytes + ids_bytes + tables_bytes

    def __repr__(self):
        return (
            f"HammingIndex(bits={self.bits}, ntotal={self.ntotal}, "
            f"has_ids={self.has_ids}"
            + ("" if self.method == "scan" else f", method={self.method!r}") + ")"
        )

    # ------------------------------------------------------------------
    # Adding
    # ------------------------------------------------------------------

    def add(self, codes, ids=None):
        """Appends packed codes to the index.

        Everything is validated before anything changes: a rejected call
        leaves the index exactly as it was.

        Args:
            codes: `uint8` array of shape `(n, bits / 8)`, packed as
                `np.packbits` does.
            ids: optional integer array of shape `(n,)`, non-negative, returned
                by `search` in place of positions. Either every `add` gives
                ids or none does. Ids are not required to be unique. Without
                ids, a code's id is its insertion position (0, 1, 2, ...
                across calls).

        Examples:

        >>> index = HammingIndex(bits=16)
        >>> index.add(np.zeros((2, 2), np.uint8), ids=np.array([10, 20]))
        >>> index.search(np.zeros((1, 2), np.uint8), k=1)[1].tolist()
        [[10]]
        """
        codes = self._check_codes(codes, "codes")
        n = codes.shape[0]
        ids = check_ids(ids, n, size=self.ntotal, has_ids=self._ids is not None, holder="index")
        if n == 0:
            return
        old_n = self.ntotal
        new_n = old_n + n
        cs = self.code_size

        # Build the grown buffers off to the side, then swap them in, so
        # a failure (e.g. MemoryError) leaves the old state intact.
        engine, id_buf = self._index, self._ids
        capacity = self.code_bytes // cs
        if new_n > capacity:
            capacity = max(new_n, capacity + capacity // _GROWTH_DIVISOR)
            engine = self._new_engine(capacity)
            if old_n:
                self._view(engine, old_n)[:] = self._view(self._index, old_n)
            if ids is not None:
                id_buf = np.empty(capacity, np.int64)
                if old_n:
                    id_buf[:old_n] = self._ids[:old_n]

        # Rows at and past ntotal are invisible to faiss, so writing them
        # before bumping ntotal is safe.
        self._view(engine, new_n)[old_n * cs :] = codes.reshape(-1)
        if ids is not None:
            id_buf[old_n:new_n] = ids
        engine.ntotal = new_n
        self._index, self._ids = engine, id_buf
        self._mih_tables = None  # stale (tfhash.mih rebuilds them on demand)

    def codes(self):
        """A copy of the packed codes held, (ntotal, bits / 8) uint8, in insertion order."""
        return self._codes_view().copy()

    # ------------------------------------------------------------------
    # Searching
    # ------------------------------------------------------------------

    def search(self, queries, k):
        """Finds the `k` nearest codes of each query, exactly.

        A `k` larger than the index is not an error: the result has
        `min(k, ntotal)` columns (every code, ranked), with no padding. So
        "the 10 nearest" of a 3-code index are its 3 codes, and memory is
        bounded by `nq * ntotal` whatever `k` is (`k=2**40` is fine).

        Args:
            queries: `uint8` array of shape `(nq, bits / 8)`.
            k: number of neighbors wanted, a positive int.

        Returns:
            `(distances, ids)`: `int32` and `int64` arrays of shape
            `(nq, min(k, ntotal))`, sorted by distance, ties by insertion
            order.

        Raises:
            ValueError: for malformed `queries`, a `k` that is not an int
                `>= 1`, or an empty index (`ntotal == 0`): an empty database
                is almost always a mistake upstream, so it is reported rather
                than answered with 0 columns.

        Examples:

        >>> index = HammingIndex(bits=8)
        >>> index.add(np.array([[0b11], [0b01]], dtype=np.uint8))
        >>> d, i = index.search(np.array([[0b01]], dtype=np.uint8), k=3)
        >>> d.tolist(), i.tolist()
        ([[0, 1]], [[1, 0]])
        """
        queries = self._check_codes(queries, "queries")
        if not _is_int(k) or k <= 0:
            raise ValueError(f"Expected `k` to be a positive int. Received: k={k!r}")
        self._check_not_empty("search")
        # faiss allocates (nq, k) outputs: never ask it for more than exists.
        k = min(int(k), self.ntotal)
        if queries.shape[0] == 0:
            return np.empty((0, k), np.int32), np.empty((0, k), np.int64)
        if self.method != "scan" and 2 * k < self.ntotal:
            from tfhash import mih

            if self.method == "mih":
                return mih.knn(self, queries, k, **self._mih_settings())
            return mih.auto_knn(self, queries, k)
        return self._scan_search(queries, k)

    def range_search(self, queries, radius):
        """Finds every code within Hamming distance `radius` (inclusive).

        Args:
            queries: `uint8` array of shape `(nq, bits / 8)`.
            radius: int in `[0, bits]`; codes with `distance <= radius` are
                returned (faiss's own `range_search` is exclusive, `<`).

        Returns:
            `(lims, distances, ids)`, laid out like faiss: the results of
            query `i` are `distances[lims[i]:lims[i + 1]]` (`int32`) and
            `ids[lims[i]:lims[i + 1]]` (`int64`); `lims` is `int64` of length
            `nq + 1`. Each query's results are sorted by distance, ties by
            insertion order.

        Examples:

        >>> index = HammingIndex(bits=8)
        >>> index.add(np.array([[0b00], [0b11], [0b01]], dtype=np.uint8))
        >>> lims, d, i = index.range_search(np.array([[0]], np.uint8), 1)
        >>> lims.tolist(), d.tolist(), i.tolist()
        ([0, 2], [0, 1], [0, 2])
        """
        queries = self._check_codes(queries, "queries")
        self._check_radius(radius)
        self._check_not_empty("range_search")
        nq = queries.shape[0]
        if nq == 0:
            return (np.zeros(1, np.int64), np.empty(0, np.int32), np.empty(0, np.int64))
        if self.method == "mih":
            from tfhash import mih

            return mih.range_search(self, queries, int(radius), **self._mih_settings())
        lims, distances, positions = self._scan_range(queries, radius)
        return lims, distances, self._to_ids(positions)

    # ------------------------------------------------------------------
    # Saving and loading
    # ------------------------------------------------------------------

    def save(self, path):
        """Writes the index to `path`, atomically.

        Through `tfhash.io.write_atomically`: written to a temporary file in
        the same folder, flushed to disk, then renamed over `path`, so readers
        see either the old file or the complete new one, and a failed save
        leaves no partial file. Each save first removes the temporaries of
        earlier saves to `path` killed outright (SIGKILL, power loss).

        Format (little-endian): magic `b"TFHASHIX"`, format version (u32),
        bits (u32), flags (u32, bit 0 = has ids, bit 1 = has metadata), n
        (u64), CRC-32 of those 28 bytes (u32); then the codes (`n * bits / 8`
        bytes), the ids (`n` int64, if any), the metadata (u64 length and
        UTF-8 JSON, if any; format version 2) and a CRC-32 of all of them
        (u32). No pickle.

        Args:
            path: destination file (str or path-like).

        Examples:

        >>> import tempfile
        >>> index = HammingIndex(bits=8)
        >>> index.add(np.array([[1], [2]], dtype=np.uint8))
        >>> path = os.path.join(tempfile.mkdtemp(), "codes.tfhi")
        >>> index.save(path)
        >>> HammingIndex.load(path).ntotal
        2
        """
        # Temporary, sync, rename, and removal of killed saves' temporaries: tfhash.io's one writer.
        write_atomically(os.fspath(path), self.write_to)

    def write_to(self, file):
        """Writes the index, in `save`'s format, to `file` as it is, not
        atomically: for a writer that makes the file whole itself (`save`,
        or a `tfhash.io.transaction` member)."""
        n = self.ntotal
        flags = (FLAG_IDS if self._ids is not None else 0) | (FLAG_METADATA if self.metadata else 0)
        version = 2 if self.metadata else 1  # version 1 readers load an index without metadata
        header = _HEADER.pack(MAGIC, version, self.bits, flags, n)
        header += _CRC.pack(zlib.crc32(header))
        with open(file, "wb") as f:
            f.write(header)
            crc = 0
            for chunk in self._payload_chunks():
                crc = zlib.crc32(chunk, crc)
                f.write(chunk)
            if self.metadata:
                text = json.dumps(self.metadata, sort_keys=True).encode()
                for chunk in (_LENGTH.pack(len(text)), text):
                    crc = zlib.crc32(chunk, crc)
                    f.write(chunk)
            f.write(_CRC.pack(crc))

    @classmethod
    def load(cls, path, method=None):
        """Reads an index written by `save`.

        Refuses, with a `ValueError` saying what was expected and what was
        found: files that are not HammingIndex files (wrong magic), files from
        a newer format version, headers out of bounds (bits not a multiple of
        8 in `[8, MAX_BITS]`, unknown flags, a count `n` the file size does
        not hold), truncated files and corrupted files (CRC-32 mismatch).
        Header fields are all checked before anything is allocated.

        Args:
            path: file written by `HammingIndex.save` (str or path-like).
            method: how the loaded index searches (see the class's Args);
                default the class's (`"scan"`; `MultiIndexHashing`'s `"mih"`).

        Returns:
            A new `HammingIndex` with the same codes, ids and search results.

        Raises:
            FileNotFoundError: if `path` does not exist.
            ValueError: if the file is not a valid HammingIndex file.
        """
        path = os.fspath(path)
        method = None if method is None else _check_method(method)
        recover(path)  # an encode killed between its codes and this index: finish it (tfhash.io.transaction)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"No HammingIndex file at {path!r}: the file does not exist."
            ) from None
        with f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_HEADER_SIZE)
            bits, flags, n = _parse_header(path, head)
            code_size = bits // 8
            ids_size = 8 * n if flags & FLAG_IDS else 0
            expected = _HEADER_SIZE + n * code_size + ids_size + _CRC.size
            metadata_size = 0
            if flags & FLAG_METADATA and size >= expected + _LENGTH.size:
                f.seek(expected - _CRC.size)
                (metadata_size,) = _LENGTH.unpack(f.read(_LENGTH.size))
                f.seek(_HEADER_SIZE)
            if flags & FLAG_METADATA:
                expected += _LENGTH.size + metadata_size
            if size != expected:
                what = "truncated" if size < expected else "corrupted (trailing bytes)"
                raise ValueError(
                    f"HammingIndex file {path!r} is {what}: its header "
                    f"(bits={bits}, n={n}, has_ids={bool(ids_size)}) implies "
                    f"{expected} bytes, found {size} bytes."
                )

            index = cls(bits)
            index.method = method or index.method
            # Read codes straight into faiss's buffer: no second copy.
            index._index = cls._new_engine_for(bits, n)
            crc = 0
            if n:
                codes = cls._view(index._index, n)
                _read_into(f, codes)
                crc = zlib.crc32(codes, crc)
            ids = None
            if ids_size:
                ids = np.empty(n, "<i8")
                if n:
                    _read_into(f, ids.view(np.uint8))
                    crc = zlib.crc32(ids.view(np.uint8), crc)
            metadata = {}
            if flags & FLAG_METADATA:
                text = f.read(_LENGTH.size + metadata_size)
                crc = zlib.crc32(text, crc)
            (stored,) = _CRC.unpack(f.read(_CRC.size))
            if crc != stored:
                raise ValueError(
                    f"HammingIndex file {path!r} is corrupted: checksum "
                    f"(CRC-32 of codes and ids) expected 0x{stored:08x} as "
                    f"stored, found 0x{crc:08x}."
                )
            if flags & FLAG_METADATA:
                try:
                    metadata = json.loads(text[_LENGTH.size:])
                except ValueError as error:
                    raise ValueError(f"HammingIndex file {path!r} is corrupted: expected its metadata as JSON. "
                                     f"Received: {error}") from None
        index._index.ntotal = n
        index._ids = None if ids is None else ids.astype(np.int64, copy=False)
        index.metadata = metadata
        return index

    # ------------------------------------------------------------------
    # Internals
    # ------------------------------------------------------------------

    def _new_engine(self, capacity):
        return self._new_engine_for(self.bits, capacity)

    @staticmethod
    def _new_engine_for(bits, capacity):
        """An empty IndexBinaryFlat whose code buffer holds `capacity` rows."""
        engine = faiss.IndexBinaryFlat(bits)
        # Pinned rather than inherited: the exact heap (faiss >= 1.7.3 breaks
        # its ties by database index) is what makes ties deterministic, and
        # it is as fast as the counter method at 64 bits, faster at 128.
        engine.use_heap = True
        engine.approx_topk_mode = faiss.EXACT_TOPK
        engine.query_batch_size = _QUERY_BATCH
        if capacity:
            # resize() of an empty std::vector allocates exactly this much;
            # insert() (faiss's add) would grow it up to 2x.
            engine.xb.resize(capacity * (bits // 8))
        return engine

    @staticmethod
    def _view(engine, rows):
        """Writable NumPy view of the first `rows` codes in `engine`'s buffer."""
        nbytes = rows * engine.code_size
        if nbytes == 0:
            return np.empty(0, np.uint8)
        return faiss.rev_swig_ptr(engine.xb.data(), nbytes)

    def _payload_chunks(self):
        n = self.ntotal
        if n:
            codes = self._view(self._index, n)
            for start in range(0, codes.size, _IO_CHUNK):
                yield codes[start : start + _IO_CHUNK]
        if self._ids is not None and n:
            ids = self._ids[:n].astype("<i8", copy=False).view(np.uint8)
            for start in range(0, ids.size, _IO_CHUNK):
                yield ids[start : start + _IO_CHUNK]

    def _codes_view(self):
        """The codes held, (ntotal, code_size) uint8, a view of faiss's buffer (no copy; an add may free it)."""
        return self._view(self._index, self.ntotal).reshape(self.ntotal, self.code_size)

    def _scan_search(self, queries, k):
        """The scan's k-NN of checked queries, `1 <= k <= ntotal`: (distances, ids)."""
        distances, positions = self._index.search(queries, k)
        return distances, self._to_ids(positions)

    def _scan_range(self, queries, radius):
        """The scan's range search of checked queries: (lims, distances, positions),
        each query's results by distance, then position."""
        lims, distances, positions = self._index.range_search(queries, int(radius) + 1)
        lims = lims.astype(np.int64)
        distances = distances.astype(np.int32)
        # faiss does not promise an order inside a query's results: sort by
        # (query, distance, position) explicitly.
        query_of = np.repeat(np.arange(len(queries), dtype=np.int64), np.diff(lims))
        order = np.lexsort((positions, distances, query_of))
        return lims, distances[order], positions[order]

    def _mih_settings(self):
        """What `tfhash.mih`'s calls take beyond the queries (MultiIndexHashing's m, budget and stats)."""
        return {}

    def _to_ids(self, positions):
        # k <= ntotal, so faiss fills every slot: no -1 positions to mask.
        if self._ids is None:
            return positions
        return self._ids[positions]

    def _check_not_empty(self, method):
        if self.ntotal == 0:
            raise ValueError(
                f"Cannot {method} an empty HammingIndex (ntotal=0); "
                "call add() with some codes first."
            )

    def _check_radius(self, radius):
        """A `range_search` radius: an int in [0, bits], or a one-line ValueError."""
        if not _is_int(radius) or not 0 <= radius <= self.bits:
            raise ValueError(f"`radius` must be an int in [0, bits={self.bits}]. Received: radius={radius!r}")

    def _check_codes(self, codes, name):
        codes = np.asarray(codes)
        expected = f"uint8 array of shape (n, {self.code_size})"
        received = f"dtype={codes.dtype}, shape={codes.shape}"
        hint = f" for bits={self.bits} (packed as np.packbits)"
        if codes.dtype != np.uint8:
            raise ValueError(
                f"`{name}` must be a {expected}{hint}; no conversion is done. "
                f"Received: {received}"
            )
        if codes.ndim != 2:
            raise ValueError(
                f"`{name}` must be a 2-D {expected}{hint}. Received: {received}"
            )
        if codes.shape[1] != self.code_size:
            raise ValueError(
                f"`{name}` must be a {expected}{hint}: width "
                f"{self.code_size} bytes, received width {codes.shape[1]}. "
                f"Received: {received}"
            )
        return np.ascontiguousarray(codes)


class MultiIndexHashing(HammingIndex):
    """`HammingIndex(bits, method="mih")` with multi-index hashing's settings
    and counters: exact Hamming k-NN and range search through `m` substring
    tables (`tfhash.mih` has the algorithm, Norouzi et al.), the scan's
    results bit for bit, dtypes and tie order included.

    A query whose probing would cost more than `budget * ntotal` units of
    work (a probe or a verified code each) is answered by the scan instead;
    `k >= ntotal / 2` goes straight to the scan. Tables are rebuilt, in
    `O(m * ntotal)`, by the first search after an `add` (or by `build()`);
    `memory_bytes` counts them. Queries run on as many threads as faiss's
    (`faiss.omp_get_max_threads()`). Importing numba, the first one made
    takes a second or so.

    Args:
        bits: code length, a positive multiple of 8.
        m: substrings per code, in `[ceil(bits / 32), bits]`; by default
            chosen when the tables are built, from `ntotal`
            (`tfhash.mih.default_m`).
        budget: per-query work limit as a fraction of `ntotal` before the
            scan takes over (`math.inf`: never); default
            `tfhash.mih.DEFAULT_BUDGET` (0.02).

    Attributes:
        stats: queries the tables answered (`"mih"`) and handed to the scan
            (`"scan"`), and the units of work they spent on k-NN (`"work"`),
            cumulative; informational.
    """

    def __init__(self, bits, m=None, budget=None):
        from tfhash import mih

        super().__init__(bits, method="mih")
        if m is not None and (not _is_int(m) or not -(-self.bits // 32) <= m <= self.bits):
            raise ValueError(f"Expected `m` to be None or an int in [ceil(bits / 32), bits] = "
                             f"[{-(-self.bits // 32)}, {self.bits}]. Received: m={m!r}")
        budget = mih.DEFAULT_BUDGET if budget is None else budget
        if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not budget > 0:
            raise ValueError(f"Expected `budget` to be a positive number. Received: budget={budget!r}")
        self._m = None if m is None else int(m)
        self.budget = budget
        self.stats = {"mih": 0, "scan": 0, "work": 0}

    @property
    def m(self):
        """Substrings per code: as given, else as the tables were (or will be) built."""
        from tfhash import mih

        if self._m is not None:
            return self._m
        if self._mih_tables is not None:
            return self._mih_tables.m
        return mih.default_m(self.ntotal, self.bits)

    @property
    def table_bytes(self):
        """Bytes held by the substring tables (0 until built)."""
        return 0 if self._mih_tables is None else self._mih_tables.nbytes

    def __repr__(self):
        return (f"MultiIndexHashing(bits={self.bits}, m={self.m}, ntotal={self.ntotal}, "
                f"has_ids={self.has_ids})")

    def _mih_settings(self):
        return {"m": self._m, "budget": self.budget, "stats": self.stats}

    def build(self):
        """Builds the substring tables now (else the next search does)."""
        from tfhash import mih

        self._check_not_empty("build")
        mih.tables(self, self._m)


def _parse_header(path, head):
    """Checks the fixed header; returns (bits, flags, n)."""
    if not head or head[: len(MAGIC)] != MAGIC[: len(head)]:
        problem = "is empty" if not head else "is not a HammingIndex file"
        raise ValueError(
            f"File {path!r} {problem}: expected it to start with magic "
            f"{MAGIC!r}, found {head[: len(MAGIC)]!r}."
        )
    if len(head) < _PREAMBLE.size:
        raise ValueError(
            f"HammingIndex file {path!r} is truncated: expected at least "
            f"{_HEADER_SIZE} bytes of header, found {len(head)} bytes."
        )
    _, version = _PREAMBLE.unpack_from(head)
    if version > FORMAT_VERSION or version < 1:
        newer = " (written by a newer tfhash?)" if version > FORMAT_VERSION else ""
        raise ValueError(
            f"HammingIndex file {path!r} has format version {version}{newer}; "
            f"this tfhash reads version {FORMAT_VERSION}."
        )
    if len(head) < _HEADER_SIZE:
        raise ValueError(
            f"HammingIndex file {path!r} is truncated: expected a "
            f"{_HEADER_SIZE}-byte header, found {len(head)} bytes."
        )
    (stored,) = _CRC.unpack_from(head, _HEADER.size)
    crc = zlib.crc32(head[: _HEADER.size])
    if crc != stored:
        raise ValueError(
            f"HammingIndex file {path!r} is corrupted: header checksum "
            f"expected 0x{stored:08x} as stored, found 0x{crc:08x}."
        )
    _, _, bits, flags, n = _HEADER.unpack_from(head)
    # The header CRC matched, so these only fail for a file we did not write
    # (or a crafted one). Checked before anything is allocated; `n` is checked
    # against the file size by the caller, also before allocating.
    if not 0 < bits <= MAX_BITS or bits % 8:
        raise ValueError(
            f"HammingIndex file {path!r} has an invalid header: expected "
            f"bits a multiple of 8 in [8, {MAX_BITS}], found bits={bits}."
        )
    known = FLAG_IDS | (FLAG_METADATA if version >= 2 else 0)
    if flags & ~known:
        raise ValueError(
            f"HammingIndex file {path!r} has an invalid header: expected "
            f"flags in [0, {known}] for format version {version}, found flags={flags}."
        )
    return bits, flags, n


def _read_into(f, buffer):
    view = memoryview(buffer).cast("B")
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise ValueError(
                f"HammingIndex file {f.name!r} is truncated: expected "
                f"{len(view)} more bytes, found {done}."
            )
        done += got
